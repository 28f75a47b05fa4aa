# The MeTA1-style configuration language: `name = value;`, `name { ... }`,
# `name "label" { ... }`, lists `{ a, b }`, `#` comments. Owns: the tokenizer
# (line:column on every token), the parser, typed values and validation against
# schema.TABLES, and the error format `FILE:LINE:COL: error: message`.
# Must never: depend on dict order, hold the whole file in RAM when reading a
# path (it is read in small chunks), use `re` or `ipaddress` (MicroPython), or
# stop at the first error (errors are collected, up to MAX_ERRORS).
# Heap (a 64K MicroPython heap must import conf+cbor and load the default):
# no list of tokens or lines is ever built, no per-token dicts or closures, the
# rarely-needed did-you-mean and docs live in conf/hints.py (imported on error
# only), and on MicroPython the heap is collected at a few points of load() so
# that the long-lived values are packed low instead of strewn among garbage.
import gc

from meta1lite.conf import schema
from meta1lite.conf.schema import (  # noqa: F401
    LIST_TYPES,
    convert,
    parse_endpoint,
    parse_via,
    to_duration,
    to_size,
)
from meta1lite.const import const

MAX_ERRORS = const(50)       # errors reported for one file before giving up
DEFAULT_FILENAME = const("<default>")
READ_CHUNK = const(256)      # characters read from a file at a time

_PUNCT = "{};,="
_SPACE = " \t\r\n\f\v"
_STOP = _SPACE + _PUNCT + '"#'
_VALUE_TOKENS = ("word", "str", "bad")    # "bad": an unterminated string

Config = dict   # a Config is a plain nested dict (see load())

# gc.collect on MicroPython only (feature test: CPython's gc has no mem_free,
# and a full CPython collection per section would only cost time)
_collect = gc.collect if hasattr(gc, "mem_free") else None


class ConfError:
    # one problem in a configuration file, at a 1-based line and column

    def __init__(self, file, line, col, message):
        self.file, self.line, self.col, self.message = file, line, col, message

    def __str__(self):
        return "%s:%d:%d: error: %s" % (self.file, self.line, self.col, self.message)

    def __repr__(self):
        return "ConfError(%r)" % str(self)


# the modules of the parser: a MicroPython daemon drops them after start-up (and
# after a reload) with heap.forget_modules(MODULES)
MODULES = ("meta1lite.conf.hints", "meta1lite.conf.schema", "meta1lite.conf")


class ConfigError(Exception):
    # raised by load()/loads() with .errors, the list of every ConfError

    def __init__(self, errors):
        super().__init__("\n".join([str(e) for e in errors]))
        self.errors = errors


class _Errors:
    def __init__(self, filename):
        self.filename, self.items, self._syntax_line = filename, [], 0

    def add(self, line, col, message):
        if len(self.items) < MAX_ERRORS:
            self.items.append(ConfError(self.filename, line, col, message))

    def at(self, tok, message):
        self.add(tok[2], tok[3], message)

    def syntax(self, line, col, message):
        # one syntax error per line: the rest of a broken line is a cascade
        if line != self._syntax_line:
            self._syntax_line = line
            self.add(line, col, message)


# ---- tokenizer: tokens are (kind, text, line, col, width) ----

class _Lexer:
    def __init__(self, lines, errors):
        self._lines, self._errors = lines, errors
        self._text, self._pos, self._lineno = "", 0, 0
        self._ahead = None
        self.end = (1, 1)       # line, column just after the last token taken

    def peek(self):
        if self._ahead is None:
            self._ahead = self._scan()
        return self._ahead

    def take(self):
        tok = self.peek()
        self._ahead = None
        self.end = (tok[2], tok[3] + tok[4])
        return tok

    def _next_line(self):
        for line in self._lines:
            self._text, self._pos, self._lineno = line, 0, self._lineno + 1
            return True
        return False

    def _scan(self):
        while True:
            text, pos = self._text, self._pos
            while pos < len(text) and text[pos] in _SPACE:
                pos += 1
            self._pos = pos
            if pos < len(text) and text[pos] != "#":
                break
            if not self._next_line():
                return ("eof", "end of file", self.end[0], self.end[1], 0)
        ch = text[pos]
        if ch in _PUNCT:
            self._pos = pos + 1
            return (ch, ch, self._lineno, pos + 1, 1)
        if ch == '"':
            return self._string(text, pos)
        end = pos
        while end < len(text) and text[end] not in _STOP:
            end += 1
        self._pos = end
        return ("word", text[pos:end], self._lineno, pos + 1, end - pos)

    def _string(self, text, start):
        # the value is one slice of the line unless it holds escapes
        value, pos, piece = "", start + 1, start + 1
        while pos < len(text) and text[pos] not in "\r\n":
            ch = text[pos]
            if ch == '"':
                self._pos = pos + 1
                return ("str", value + text[piece:pos] if value else text[piece:pos],
                        self._lineno, start + 1, pos + 1 - start)
            if ch == "\\":
                nxt = text[pos + 1:pos + 2]
                value += text[piece:pos]
                if nxt and nxt in '"\\':
                    value, pos = value + nxt, pos + 1
                else:
                    self._errors.add(self._lineno, pos + 1,
                                     "unknown escape '\\%s' in a string (only \\\" and \\\\)" % nxt)
                    value += ch
                piece = pos + 1
            pos += 1
        self._errors.syntax(self._lineno, start + 1, "unterminated string: missing closing '\"'")
        self._pos = pos
        return ("bad", value + text[piece:pos], self._lineno, start + 1, pos - start)


def _describe(tok):
    if tok[0] == "eof":
        return "end of file"
    return "'%s'" % tok[1]


# ---- parser: streams each statement into a _Section (no syntax tree is kept,
# so a whole file never sits in the heap). A value is a token or
# ("list", [tokens], line, col, 1). ----

def _parse_block(lex, errs, opener, name, sink):
    while True:
        tok = lex.peek()
        if tok[0] == "eof":
            if opener is not None:
                errs.syntax(opener[2], opener[3], "unbalanced braces: the '{' of '%s' is never"
                            " closed (missing '}')" % name)
            break
        lex.take()
        if tok[0] == "}":
            if opener is not None:
                break
            errs.syntax(tok[2], tok[3], "unbalanced braces: '}' without a matching '{'")
        elif tok[0] == "word":
            _parse_statement(lex, errs, tok, sink)
        elif tok[0] != ";":
            errs.syntax(tok[2], tok[3], "expected an option name, found %s" % _describe(tok))
            _recover(lex)
    if sink is not None:
        sink.finish()


def _recover(lex):
    # skip to just after the next ';' (or before a '}' / end of file)
    depth = 0
    while True:
        kind = lex.peek()[0]
        if kind == "eof" or (kind == "}" and depth == 0):
            return
        lex.take()
        if kind == ";" and depth == 0:
            return
        if kind == "{":
            depth += 1
        elif kind == "}":
            depth -= 1


def _parse_statement(lex, errs, name, sink):
    label, tok = None, lex.peek()
    if tok[0] in ("str", "bad"):
        label = lex.take()
        tok = lex.peek()
        if tok[0] != "{":
            what = "missing '=' before the value of" if tok[0] == ";" else "expected '{' after the label of"
            errs.syntax(tok[2], tok[3], "%s '%s'" % (what, name[1]))
            _recover(lex)
            return
    if tok[0] == "{":
        lex.take()
        child = sink.section(name, label) if sink is not None else None
        _parse_block(lex, errs, tok, name[1], child)
        return
    if tok[0] != "=":
        errs.syntax(tok[2], tok[3], "expected '=' or '{' after '%s', found %s" % (name[1], _describe(tok)))
        _recover(lex)
        return
    lex.take()
    value = _parse_value(lex, errs)
    if value is None:
        _recover(lex)
        return
    if lex.peek()[0] == ";":
        lex.take()
    else:
        errs.syntax(lex.end[0], lex.end[1], "missing ';' after the value of '%s'" % name[1])
    if sink is not None:
        sink.option(name, value)
        if _collect is not None:
            _collect()      # MicroPython: keep what stays packed low (see the header)


def _parse_value(lex, errs):
    tok = lex.peek()
    if tok[0] in _VALUE_TOKENS:
        return lex.take()
    if tok[0] != "{":
        errs.syntax(tok[2], tok[3], "expected a value, found %s" % _describe(tok))
        return None
    lex.take()
    items = []
    while True:
        item = lex.peek()
        if item[0] == "}":
            lex.take()
            return ("list", items, tok[2], tok[3], 1)
        if item[0] not in _VALUE_TOKENS:
            errs.syntax(item[2], item[3], "expected a list item or '}', found %s" % _describe(item))
            return None
        items.append(lex.take())
        sep = lex.peek()
        if sep[0] == ",":
            lex.take()
        elif sep[0] != "}":
            errs.syntax(lex.end[0], lex.end[1], "expected ',' or '}' after a list item")
            if sep[0] not in _VALUE_TOKENS:
                return None


# ---- validation against the schema ----

class _Context:
    def __init__(self, errs):
        self.errs, self.refs = errs, []
        self.pos = {}       # "section.option" of schema.CROSS_CHECKED -> its name token


def _default(entry):
    kind, arg, default = entry[1], entry[2], entry[3]
    if kind == "section":
        return _Section(arg, "", None, None).finish()
    if kind == "labelled":
        return []
    if default is None or default == schema.REQUIRED or kind == "optional":
        return None
    if kind in LIST_TYPES:
        return [convert(kind, arg, text) for text in default]
    return convert(kind, arg, default)


def _convert(entry, name_tok, value, ctx):
    kind, arg = entry[1], entry[2]
    items = value[1] if value[0] == "list" else [value]
    if value[0] == "list" and kind not in LIST_TYPES:
        ctx.errs.at(value, "'%s' takes one value, not a list" % name_tok[1])
        return _default(entry)
    out = []
    for tok in items:
        if tok[0] == "bad":     # an unterminated string: already reported
            continue
        try:
            out.append(convert(kind, arg, tok[1]))
        except ValueError as exc:
            ctx.errs.at(tok, "%s (in '%s')" % (exc.args[0], name_tok[1]))
    if kind == "str" and arg == "credentials" and out:
        ctx.refs.append(value)
    return out if kind in LIST_TYPES else (out[0] if out else _default(entry))


class _Section:
    # builds the dict of one section while the parser reads its statements

    def __init__(self, table, where, where_tok, ctx):
        self.table, self.where, self.where_tok, self.ctx = table, where, where_tok, ctx
        self.out, self.first = {}, {}

    def _claim(self, name_tok, label, is_section):
        name = name_tok[1].lower()
        entry = schema.entry(self.table, name)
        if entry is None:
            from meta1lite.conf import hints  # only on error: a small heap
            self.ctx.errs.at(name_tok, hints.unknown(name_tok[1], is_section, self.table, self.where))
            return None
        key = name + "\n" + label[1].lower() if label else name
        if key in self.first:
            self.ctx.errs.at(name_tok, "duplicate %s '%s%s' (first at line %d, column %d)" % (
                "section" if is_section else "option", name_tok[1],
                ' "%s"' % label[1] if label else "", self.first[key][0], self.first[key][1]))
            return None
        self.first[key] = (name_tok[2], name_tok[3])
        return entry

    def option(self, name_tok, value):
        entry = self._claim(name_tok, None, False)
        if entry is None:
            return
        if entry[1] in schema.SECTION_TYPES:
            self.ctx.errs.at(name_tok, "'%s' is a section: write %s { ... }" % (name_tok[1], entry[0]))
        else:
            self.out[entry[0]] = _convert(entry, name_tok, value, self.ctx)
            if _join(self.where, entry[0]) in schema.CROSS_CHECKED:
                self.ctx.pos[_join(self.where, entry[0])] = name_tok

    def section(self, name_tok, label):
        # the _Section of a nested section, or None to skip it (error reported)
        entry = self._claim(name_tok, label, True)
        if entry is None:
            return None
        name, kind = entry[0], entry[1]
        if kind not in schema.SECTION_TYPES:
            self.ctx.errs.at(name_tok, "'%s' is an option: write %s = value;" % (name_tok[1], name))
            return None
        if (kind == "labelled") != (label is not None):
            hint = '%s "LABEL" { ... }' % name if kind == "labelled" else "%s { ... }" % name
            self.ctx.errs.at(label or name_tok, "'%s' %s: write %s" % (
                name_tok[1], "needs a label" if label is None else "takes no label", hint))
            return None
        where = _join(self.where, name) + (' "%s"' % label[1] if label else "")
        child = _Section(entry[2], where, name_tok, self.ctx)
        if kind == "labelled":
            self.out.setdefault(name, []).append((label[1], child.out))
        else:
            self.out[name] = child.out
        return child

    def finish(self):
        # fill in the defaults of what was not written; return the dict
        out = self.out
        for entry in schema.entries(self.table):
            if entry[0] not in out:
                if entry[3] == schema.REQUIRED and self.ctx is not None:
                    self.ctx.errs.at(self.where_tok, "section '%s' needs '%s'" % (self.where, entry[0]))
                out[entry[0]] = _default(entry)
        self.first = None       # positions of duplicates are no longer needed
        if _collect is not None and self.ctx is not None:
            _collect()          # MicroPython: pack what stays before the next section
        return out


def _join(where, name):
    return where + "." + name if where else name


def _finish(cfg, ctx):
    smar, smtpc = cfg["smar"], cfg["smtpc"]
    if not [1 for label, _ in smar["route"] if label == schema.DEFAULT_ROUTE]:
        smar["route"].append((schema.DEFAULT_ROUTE, _Section("route", "", None, None).finish()))
    for routes in (smar["route"], smar["sender_route"]):
        for _, route in routes:
            if route["tls"] is None:
                route["tls"] = smtpc["tls"]
    if cfg["control"] is None:
        cfg["control"] = cfg["spool"].rstrip("/") + "/" + schema.DEFAULT_CONTROL_NAME
    names = [label.lower() for label, _ in smtpc["credentials"]]
    for tok in ctx.refs:
        if tok[1].lower() not in names:
            ctx.errs.at(tok, "auth '%s' names no smtpc credentials section (known: %s)" % (
                tok[1], ", ".join(['"%s"' % label for label, _ in smtpc["credentials"]]) or "none"))
    _check_sizes(cfg, ctx)
    cfg["config_file"] = None
    return cfg


def _check_sizes(cfg, ctx):
    # a message that max_message_size permits must fit in an empty queue, or it
    # would get 452 (try again) forever
    size, queue = cfg["smtps"]["max_message_size"], cfg["qmgr"]["max_queue_size"]
    if size and size + schema.HEADER_ROOM <= queue:
        return
    tok = ctx.pos.get("smtps.max_message_size") or ctx.pos.get("qmgr.max_queue_size")
    from meta1lite.conf import hints  # only on error: a small heap
    message = hints.size_conflict(size, queue)
    if tok is None:
        ctx.errs.add(1, 1, message)
    else:
        ctx.errs.at(tok, message)


def _text_lines(text):
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def _file_lines(f):
    # the lines of a text file, read READ_CHUNK characters at a time (a
    # MicroPython readline() grows its line 16 bytes at a time and reads one
    # byte per syscall: garbage that strews the heap)
    rest = ""
    while True:
        chunk = f.read(READ_CHUNK)
        if not chunk:
            break
        start = 0
        while True:
            end = chunk.find("\n", start)
            if end < 0:
                rest += chunk[start:]
                break
            if rest:
                line, rest = rest + chunk[start:end + 1], ""
            else:
                line = chunk[start:end + 1]
            yield line
            start = end + 1
        chunk = None
    if rest:
        yield rest


def _build(lines, filename):
    if _collect is not None:
        _collect()
    errs = _Errors(filename)
    ctx = _Context(errs)
    top = _Section("top", "", None, ctx)
    _parse_block(_Lexer(lines, errs), errs, None, "", top)
    cfg = _finish(top.out, ctx)
    errs.items.sort(key=lambda e: (e.line, e.col))
    return cfg, errs.items


def check(text, filename="<string>"):
    # every error in a configuration text (empty list: valid)
    return _build(_text_lines(text), filename)[1]


def loads(text, filename="<string>"):
    # parse and validate configuration text; return the Config or raise ConfigError
    cfg, errors = _build(_text_lines(text), filename)
    if errors:
        raise ConfigError(errors)
    return cfg


def load(path=None):
    # Load a configuration file (None: the embedded default, i.e. every option
    # at its default). The Config is a plain nested dict: every option present
    # with its default filled in; sizes in bytes, durations in seconds; plus
    # cfg["config_file"] = path. Raises ConfigError, or OSError if unreadable.
    if path is None:
        cfg, errors = _build(iter(()), DEFAULT_FILENAME)
    else:
        with open(path) as f:
            cfg, errors = _build(_file_lines(f), path)
    if errors:
        raise ConfigError(errors)
    cfg["config_file"] = path
    return cfg

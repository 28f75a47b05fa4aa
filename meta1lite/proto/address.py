# meta1lite/proto/address.py - RFC 5321 paths and ESMTP parameters (section 4.1.2,
# with RFC 6531 SMTPUTF8): `<>`, `<local@domain>`, quoted local parts with
# quoted-pairs, address literals `[1.2.3.4]` / `[IPv6:...]`, source routes
# `<@a,@b:u@d>`, and the `KEY=VALUE` parameters after the path.
# Owns: syntax, the 64/255/256 octet limits, and the facts the relay layer needs
# to refuse tricks: a source route was present (`has_route`; only the final mailbox
# counts, the route is never followed), and the local part holds `%`, `!` or a
# quoted `@` (`has_percent`, `has_bang`, `has_at`).
# Must never: decide relay policy, look anything up, or let anything but
# AddressError escape on untrusted bytes. Non-ASCII is accepted only when the
# caller says SMTPUTF8 was given (else 553 5.6.7).
# Runs on MicroPython and CPython (hand-written scanner: no `re`).
from meta1lite import netaddr
from meta1lite.const import const
from meta1lite.proto import replies

_MAX_LOCAL_PART = const(64)    # octets, RFC 5321 section 4.5.3.1.1
_MAX_DOMAIN = const(255)       # octets, section 4.5.3.1.2
_MAX_PATH = const(256)         # octets incl. the angle brackets, section 4.5.3.1.3
_MAX_LABEL = const(63)         # octets per domain label (RFC 1035)
_MAX_ROUTE_HOPS = const(16)    # bound on the A-d-l list we bother to parse
_MAX_PARAMS = const(10)        # ESMTP parameters per MAIL/RCPT
_MAX_PARAM_KEY = const(32)
_MAX_PARAM_VALUE = const(500)

_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_ATEXT = _ALNUM + b"!#$%&'*+-/=?^_`{|}~"
_LDH = _ALNUM + b"-"
_LT, _GT, _AT, _DOT, _QUOTE, _BSLASH = 60, 62, 64, 46, 34, 92
_COLON, _COMMA, _LBRACKET, _RBRACKET, _EQUALS = 58, 44, 91, 93, 61


class AddressError(Exception):
    """Bad path or parameter; `reply` (of proto/replies.py's table) is the answer."""

    def __init__(self, reply, detail=None):
        detail = detail or replies.parts(reply)[2]
        super().__init__(detail)
        self.reply = reply
        self.detail = detail


class Mailbox:
    """A parsed path. `null` for `<>`; otherwise `local` (as given, quotes and
    quoted-pairs included), `local_unquoted`, `domain` (lower-cased; "" only for
    the bare `<Postmaster>` recipient), `is_literal` and `ip` ((family, int) of an
    address literal, else None), `route` (tuple of route domains), and the relay
    trick flags `has_route`, `has_percent`, `has_bang`, `has_at`, `quoted`, `utf8`."""

    def __init__(self, local="", local_unquoted="", domain="", ip=None, route=(), quoted=False,
                 utf8=False):
        self.null = not local and not domain
        self.local = local
        self.local_unquoted = local_unquoted
        self.domain = domain
        self.ip = ip
        self.is_literal = ip is not None
        self.route = route
        self.has_route = bool(route)
        self.quoted = quoted
        self.utf8 = utf8
        self.has_percent = "%" in local_unquoted
        self.has_bang = "!" in local_unquoted
        self.has_at = "@" in local_unquoted

    @property
    def relay_trick(self):
        """True when the path carries a source route or a %, ! or @ routing hint."""
        return self.has_route or self.has_percent or self.has_bang or self.has_at

    @property
    def address(self):
        """`local@domain` as given (domain lower-cased); "" for the null path."""
        if self.null:
            return ""
        if not self.domain:
            return self.local
        return self.local + "@" + self.domain

    def __str__(self):
        return "<%s>" % self.address

    def __repr__(self):
        return "Mailbox(%r)" % self.address


def _fail(sender, reply=None, detail=None):
    if reply is None:
        reply = replies.BAD_SENDER_SYNTAX if sender else replies.BAD_RECIPIENT_SYNTAX
    raise AddressError(reply, detail)


def _decode(raw, sender, smtputf8):
    for byte in raw:
        if byte >= 0x80:
            break
    else:
        return raw.decode("utf-8"), False
    if not smtputf8:
        _fail(sender, replies.NEED_SMTPUTF8)
    if not valid_utf8(raw):     # MicroPython's decode takes overlongs and surrogates
        _fail(sender, replies.BAD_UTF8)
    if _has_c1_control(raw):    # U+0080-U+009F: NEL, CSI... (logged as received)
        _fail(sender)
    return raw.decode("utf-8"), True


# RFC 3629 section 4: the lead bytes of 2-, 3- and 4-byte sequences, and the range
# of the second byte where it is narrower than 80..BF (no overlong forms, no
# surrogates D800..DFFF, nothing above U+10FFFF)
_UTF8_SECOND = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF),
                0xF4: (0x80, 0x8F)}


def _utf8_length(lead):
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def valid_utf8(raw):
    """True if raw is well-formed UTF-8 (RFC 3629), on either runtime."""
    i, end = 0, len(raw)
    while i < end:
        lead = raw[i]
        if lead < 0x80:
            i += 1
            continue
        n = _utf8_length(lead)
        if n == 0 or i + n > end:
            return False
        low, high = _UTF8_SECOND.get(lead, (0x80, 0xBF))
        if not low <= raw[i + 1] <= high:
            return False
        for k in range(i + 2, i + n):
            if not 0x80 <= raw[k] <= 0xBF:
                return False
        i += n
    return True


def _has_c1_control(raw):
    at = raw.find(b"\xc2")      # C1 controls are C2 80 .. C2 9F in UTF-8
    while at >= 0:
        if at + 1 < len(raw) and 0x80 <= raw[at + 1] <= 0x9F:
            return True
        at = raw.find(b"\xc2", at + 1)
    return False


def _only(raw, alphabet, utf8):
    for byte in raw:
        if byte not in alphabet and not (utf8 and byte >= 0x80):
            return False
    return True


def _valid_dot_string(raw, utf8):
    for atom in raw.split(b"."):
        if not atom or not _only(atom, _ATEXT, utf8):
            return False
    return True


def _valid_domain(raw, utf8):
    if not raw or len(raw) > _MAX_DOMAIN:
        return False
    for label in raw.split(b"."):
        if not label or len(label) > _MAX_LABEL or not _only(label, _LDH, utf8):
            return False
        if label[0] == 45 or label[-1] == 45:      # '-' may not start or end a label
            return False
    return True


def _parse_literal(raw):
    """`[1.2.3.4]` or `[IPv6:...]` (brackets included) -> (family, int), or None."""
    if len(raw) < 3 or raw[0] != _LBRACKET or raw[-1] != _RBRACKET:
        return None
    body = raw[1:-1]
    try:
        text = body.decode("utf-8")
        if text[:5].upper() == "IPV6:":
            text = text[5:]
            if ":" not in text or "%" in text:
                return None
        elif ":" in text:
            return None
        return netaddr.parse_ip(text)
    except (ValueError, UnicodeError):
        return None


def _parse_host(raw, sender, utf8):
    """Domain or address literal -> (lower-cased text, ip or None)."""
    if len(raw) > _MAX_DOMAIN:
        _fail(sender, replies.DOMAIN_TOO_LONG)
    if raw[:1] == b"[":
        ip = _parse_literal(raw)
        if ip is None:
            _fail(sender, None, "Bad address literal")
        return raw.decode("utf-8").lower(), ip
    if not _valid_domain(raw, utf8):
        _fail(sender, None, "Bad domain")
    return raw.decode("utf-8").lower(), None


def _quoted_end(raw, start):
    """Index just after the closing quote of the quoted string at raw[start], or -1."""
    i = start + 1
    n = len(raw)
    while i < n:
        byte = raw[i]
        if byte == _BSLASH:
            if i + 1 >= n or raw[i + 1] < 32 or raw[i + 1] == 127:
                return -1
            i += 2
            continue
        if byte == _QUOTE:
            return i + 1
        if byte < 32 or byte == 127:
            return -1
        i += 1
    return -1


def _unquote(raw):
    out = bytearray()
    i = 1
    while i < len(raw) - 1:
        if raw[i] == _BSLASH:
            i += 1
        out.append(raw[i])
        i += 1
    return bytes(out)


def _split_route(inner, sender, utf8):
    """`@a,@b:rest` -> ((a, b), rest); anything else -> ((), inner)."""
    if inner[:1] != b"@":
        return (), inner
    colon = _route_colon(inner)
    if colon < 0:
        _fail(sender, None, "Bad source route")
    hops = inner[:colon].split(b",")
    if len(hops) > _MAX_ROUTE_HOPS:
        _fail(sender, None, "Source route too long")
    route = []
    for hop in hops:
        if hop[:1] != b"@":
            _fail(sender, None, "Bad source route")
        route.append(_parse_host(hop[1:], sender, utf8)[0])
    return tuple(route), inner[colon + 1:]


def _route_colon(inner):
    depth = 0
    for i in range(len(inner)):
        byte = inner[i]
        if byte == _LBRACKET:
            depth += 1
        elif byte == _RBRACKET:
            depth -= 1
        elif byte == _COLON and depth == 0:
            return i
    return -1


def _split_mailbox(raw, sender):
    """`local@host` -> (local, host or None, quoted)."""
    if raw[:1] == b'"':
        end = _quoted_end(raw, 0)
        if end < 0:
            _fail(sender, None, "Bad quoted local part")
        if end == len(raw):
            return raw, None, True
        if raw[end] != _AT:
            _fail(sender, None, "Junk after quoted local part")
        return raw[:end], raw[end + 1:], True
    at = raw.find(b"@")
    if at < 0:
        return raw, None, False
    return raw[:at], raw[at + 1:], False


def parse_path(raw, sender=False, smtputf8=False, allow_postmaster=False):
    """Parse `<...>` (bytes, brackets included) into a Mailbox. `sender`: a
    Reverse-path (`<>` allowed, 5.1.7 codes); `allow_postmaster`: the bare
    `<Postmaster>` recipient of RFC 5321 section 4.1.1.3. Raises AddressError."""
    if len(raw) > _MAX_PATH:
        _fail(sender, replies.PATH_TOO_LONG)
    if len(raw) < 2 or raw[0] != _LT or raw[-1] != _GT:
        _fail(sender, None, "Path must be enclosed in <>")
    inner = raw[1:-1]
    if not inner:
        if not sender:
            _fail(sender, None, "Null path not allowed here")
        return Mailbox()
    utf8 = _decode(inner, sender, smtputf8)[1]
    route, rest = _split_route(inner, sender, utf8)
    local, host, quoted = _split_mailbox(rest, sender)
    return _build(local, host, quoted, route, sender, utf8, allow_postmaster)


def _build(local, host, quoted, route, sender, utf8, allow_postmaster):
    if len(local) > _MAX_LOCAL_PART:
        _fail(sender, replies.LOCAL_PART_TOO_LONG)
    unquoted = _unquote(local) if quoted else local
    if not quoted and not _valid_dot_string(local, utf8):
        _fail(sender, None, "Bad local part")
    if host is None:
        if allow_postmaster and not route and unquoted.lower() == b"postmaster":
            text = local.decode("utf-8")
            return Mailbox(text, text, "", None, (), quoted, utf8)
        _fail(sender, None, "Address needs a domain")
    domain, ip = _parse_host(host, sender, utf8)
    return Mailbox(local.decode("utf-8"), unquoted.decode("utf-8"), domain, ip, route, quoted,
                   utf8)


def path_end(raw):
    """Index just after the `>` that closes the path starting at raw[0] (`<`),
    skipping quoted strings; -1 if there is none."""
    if raw[:1] != b"<":
        return -1
    i = 1
    n = len(raw)
    while i < n:
        byte = raw[i]
        if byte == _QUOTE:
            i = _quoted_end(raw, i)
            if i < 0:
                return -1
            continue
        if byte == _GT:
            return i + 1
        i += 1
    return -1


def split_path(arg):
    """`<path> KEY=VALUE ...` (bytes, after `FROM:`/`TO:`) -> (path, params bytes).
    Leading spaces are tolerated (a common client habit). Raises AddressError."""
    arg = arg.lstrip(b" ")
    end = path_end(arg)
    if end < 0:
        raise AddressError(replies.SYNTAX_ERROR, "Path must be enclosed in <>")
    rest = arg[end:]
    if rest and rest[0] != 32:
        raise AddressError(replies.SYNTAX_ERROR, "Junk after path")
    return arg[:end], rest


def _valid_param(key, value):
    if not key or len(key) > _MAX_PARAM_KEY or not _only(key, _LDH, False) or key[0] == 45:
        return False
    if value is None:
        return True
    if not value or len(value) > _MAX_PARAM_VALUE:
        return False
    for byte in value:
        if byte <= 32 or byte >= 127 or byte == _EQUALS:
            return False
    return True


def parse_params(raw):
    """`KEY=VALUE KEY ...` (bytes) -> dict of upper-case str key -> str value or None.
    Duplicates and junk raise AddressError (501 5.5.4)."""
    params = {}
    for word in raw.split(b" "):
        if not word:
            continue
        eq = word.find(b"=")
        key, value = (word, None) if eq < 0 else (word[:eq], word[eq + 1:])
        if not _valid_param(key, value):
            raise AddressError(replies.BAD_PARAMETER)
        name = key.decode("utf-8").upper()
        if name in params:
            raise AddressError(replies.DUPLICATE_PARAMETER)
        if len(params) >= _MAX_PARAMS:
            raise AddressError(replies.TOO_MANY_PARAMETERS)
        params[name] = None if value is None else value.decode("utf-8")
    return params

# meta1lite.smar.aliases - smar's aliases file (/etc/aliases format) and alias expansion.
#
# Owns: parsing "name: addr1, addr2" lines ('#' comments, continuation lines that
# start with white space, keys that are a local part - for every local domain - or
# a whole address), and the recursive expansion with loop detection and bounds on
# depth and count. Must never: deliver to files, programs or :include: lists (a
# gateway has no mailboxes: such targets are skipped with a log line), grow without
# bound (MAX_ALIASES, MAX_TARGETS), or depend on dict order.
from meta1lite import compat
from meta1lite.const import const

LOG = const("smar")
MAX_ALIASES = const(1000)   # entries kept from one file
MAX_TARGETS = const(100)    # addresses of one entry, and of one whole expansion
MAX_DEPTH = 8               # nesting of aliases within aliases
MAX_LINE = const(4096)      # characters of one logical entry (with continuations)
_UNSUPPORTED = ("|", "/", ":include:")


class UnknownAddress(Exception):
    """A local address that no alias knows (550 5.1.1)."""


class AliasError(UnknownAddress):
    """An expansion that loops only into itself or exceeds MAX_DEPTH / MAX_TARGETS."""


def split_address(address):
    """('local', 'domain') of an address, the domain lowercased ('' if none)."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain.lower().rstrip(".")


def _targets(text):
    out = []
    for item in text.split(","):
        item = item.strip().strip('"').strip()
        if item.startswith("<") and item.endswith(">"):
            item = item[1:-1].strip()
        if item:
            out.append(item)
    return out


def _uncomment(line):
    for mark in (" #", "\t#"):
        cut = line.find(mark)
        if cut >= 0:
            line = line[:cut]
    return line


def _entries(lines):
    """(line number, logical entry text) with continuation lines joined."""
    current, number = None, 0
    for i, line in enumerate(lines):
        line = _uncomment(line.rstrip("\r\n"))
        if line[:1] in (" ", "\t") and current is not None:
            if line.strip() and not line.strip().startswith("#") and len(current) < MAX_LINE:
                current += " " + line.strip()
            continue
        if current is not None:
            yield number, current
            current = None
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            current, number = stripped, i + 1
    if current is not None:
        yield number, current


def parse(lines, name="aliases"):
    """{key: [targets]} from lines of an aliases file; keys lowercased. Bad lines are logged."""
    table = {}
    for number, text in _entries(lines):
        key, colon, rest = text.partition(":")
        key = key.strip().strip('"').lower()
        if not colon or not key or " " in key:
            compat.log.log("warning", LOG, "%s:%d: not 'name: address, ...': ignored"
                           % (name, number))
            continue
        targets = []
        for target in _targets(rest):
            if target.startswith(_UNSUPPORTED):
                compat.log.log("warning", LOG, "%s:%d: %s: files, programs and includes "
                               "are not supported by a relay: ignored" % (name, number, key))
            elif len(targets) < MAX_TARGETS:
                targets.append(target)
        if len(table) >= MAX_ALIASES and key not in table:
            compat.log.log("warning", LOG, "%s:%d: more than %d aliases: rest ignored"
                           % (name, number, MAX_ALIASES))
            break
        table[key] = table.get(key, []) + targets
    return table


def load(path):
    """The table of an aliases file; {} (with a log line) if it cannot be read."""
    try:
        with open(path) as f:
            return parse(f, path)
    except OSError as exc:
        compat.log.log("error", LOG, "cannot read aliases file %s: %s" % (path, exc))
        return {}


class Aliases:
    """Lookup and expansion over a parsed table; is_local(domain) says what is ours."""

    def __init__(self, table, is_local):
        self.table = table
        self.is_local = is_local

    def lookup(self, address):
        """The targets of an address (whole address first, then its local part), or None."""
        local, domain = split_address(address)
        found = self.table.get(("%s@%s" % (local, domain)).lower()) if domain else None
        if found is None:
            found = self.table.get(local.lower())
        return found

    def knows(self, address):
        """True if the table has an entry for this local address."""
        return self.lookup(address) is not None

    def expand(self, address):
        """Final addresses of address (recursive, duplicates removed).

        A non-local address is returned as it is. A local address without an alias
        raises UnknownAddress; nested local targets that are unknown or that loop
        back are dropped (logged), and AliasError is raised when nothing remains or
        a bound (MAX_DEPTH, MAX_TARGETS) is passed."""
        if not self.is_local(split_address(address)[1]):
            return [address]
        if self.lookup(address) is None:
            raise UnknownAddress("%s: unknown local address" % address)
        out = []
        self._expand(address, [], out)
        if not out:
            raise AliasError("%s: alias expands to no deliverable address" % address)
        return out

    def _expand(self, address, path, out):
        if len(path) >= MAX_DEPTH:
            raise AliasError("%s: aliases nested deeper than %d" % (path[0], MAX_DEPTH))
        key = address.lower()
        path.append(key)
        for target in self.lookup(address):
            self._target(target, path, out)
        path.pop()

    def _target(self, target, path, out):
        local = self.is_local(split_address(target)[1])
        if local and target.lower() in path:
            compat.log.log("warning", LOG, "alias loop at %s via %s: dropped"
                           % (target, " -> ".join(path)))
        elif local and self.lookup(target) is not None:
            self._expand(target, path, out)
        elif local:
            compat.log.log("warning", LOG, "alias %s: unknown local target %s: dropped"
                           % (path[0], target))
        elif target.lower() not in [a.lower() for a in out]:
            if len(out) >= MAX_TARGETS:
                raise AliasError("%s: alias expands to more than %d addresses"
                                 % (path[0], MAX_TARGETS))
            out.append(target)

# meta1lite.cli.addrlist - the address lists of To:/Cc:/Bcc: (sendmail -t) and
# the From: sendmail -F writes, on both runtimes (MicroPython has no email package).
# Owns: addresses(values), format_from(name, addr). Must never: validate an
# address (proto/address.py does), or decode RFC 2047 words.
import binascii

from meta1lite.const import const

_SPECIALS = const('()<>@,:;."[]\\')


def _top_level(text):
    """text split at top-level ',' and ';' (outside quotes, <> and comments),
    a group's display name ('name:') dropped, comments removed."""
    parts, cur, quoted, depth, angle = [], [], False, 0, False
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
            if depth == 0:
                cur.append(ch)
        elif ch == "\\":
            escaped = True
        elif quoted:
            quoted = ch != '"'
            cur.append(ch)
        elif depth:
            depth += {"(": 1, ")": -1}.get(ch, 0)
        elif ch == "(":
            depth = 1
        elif ch == '"':
            quoted = True
            cur.append(ch)
        elif angle:
            angle = ch != ">"
            cur.append(ch)
        elif ch == "<":
            angle = True
            cur.append(ch)
        elif ch in ",;":
            parts.append("".join(cur))
            cur = []
        elif ch == ":":
            cur = []                # a group: 'Friends: a@b, c@d;'
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _address(part):
    if "<" in part:
        inner = part[part.rfind("<") + 1:]
        return inner.split(">", 1)[0].strip()
    return part.strip()         # with inner spaces it stays invalid: "bad address@x"


def addresses(values):
    """The addresses (no display names) in a list of address-list field values."""
    found = []
    for value in values:
        for part in _top_level(value):
            addr = _address(part)
            if addr:
                found.append(addr)
    return found


def format_from(name, addr):
    """'Name <addr>' with the name quoted or RFC 2047-encoded as needed (as
    email.utils.formataddr)."""
    try:
        name.encode("ascii")
    except UnicodeError:
        word = binascii.b2a_base64(name.encode("utf-8")).strip().decode()
        return "=?utf-8?b?%s?= <%s>" % (word, addr)
    for ch in name:
        if ch in _SPECIALS or ch == "\t":
            return '"%s" <%s>' % (name.replace("\\", "\\\\").replace('"', '\\"'), addr)
    return "%s <%s>" % (name, addr)

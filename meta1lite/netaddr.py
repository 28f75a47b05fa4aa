# IP addresses and CIDR networks for the shared code (MicroPython has no
# `ipaddress`). Owns: parsing IPv4/IPv6 text into (family, int), formatting it
# back, and matching client addresses against networks (relay_from).
# Must never resolve names, touch sockets or files, or depend on dict order.

from meta1lite.const import const

_V4_BITS = const(32)
_V6_BITS = const(128)
_V6_GROUPS = const(8)
_V4_MAPPED_HIGH = const(0xFFFF)  # ::ffff:a.b.c.d -> bits 32..47 set, upper bits zero
_MAX_ADDRESS_TEXT = const(64)    # longer text is never an address (bounds work on junk)
_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"


def only(text, alphabet):
    """True if every character of text is in alphabet."""
    # no loop over characters: on MicroPython each would be looked up among the
    # interned strings
    return not text.strip(alphabet)


def _parse_v4(text):
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError("not an IPv4 address: %r" % text)
    value = 0
    for part in parts:
        if not part or len(part) > 3 or not only(part, _DIGITS) or (len(part) > 1 and part[0] == "0"):
            raise ValueError("not an IPv4 address: %r" % text)
        number = int(part)
        if number > 255:
            raise ValueError("IPv4 octet over 255 in %r" % text)
        value = (value << 8) | number
    return value


def _hex_groups(text, whole):
    if not text:
        return []
    groups = []
    for part in text.split(":"):
        if not part or len(part) > 4 or not only(part, _HEX):
            raise ValueError("not an IPv6 address: %r" % whole)
        groups.append(int(part, 16))
    return groups


def _v4_tail_to_hex(text):
    cut = text.rfind(":")
    v4 = _parse_v4(text[cut + 1:])
    return text[:cut + 1] + "%x:%x" % (v4 >> 16, v4 & 0xFFFF)


def _parse_v6(text):
    whole = text
    if "." in text:
        text = _v4_tail_to_hex(text)
    if text.count("::") > 1:
        raise ValueError("more than one '::' in %r" % whole)
    if "::" in text:
        head, tail = text.split("::")
        left, right = _hex_groups(head, whole), _hex_groups(tail, whole)
        missing = _V6_GROUPS - len(left) - len(right)
        if missing < 1:
            raise ValueError("too many groups in %r" % whole)
        groups = left + [0] * missing + right
    else:
        groups = _hex_groups(text, whole)
        if len(groups) != _V6_GROUPS:
            raise ValueError("an IPv6 address has 8 groups: %r" % whole)
    value = 0
    for group in groups:
        value = (value << 16) | group
    return value


def parse_ip(text):
    """Parse an IPv4 or IPv6 address (no brackets; a %zone suffix is dropped);
    return (4 or 6, int). Raises ValueError."""
    if not isinstance(text, str) or not text or len(text) > _MAX_ADDRESS_TEXT:
        raise ValueError("not an IP address: %r" % (text,))
    if ":" in text:
        return 6, _parse_v6(text.split("%")[0])
    return 4, _parse_v4(text)


def unmap(family, value):
    """(6, ::ffff:a.b.c.d) -> (4, a.b.c.d); anything else unchanged."""
    if family == 6 and (value >> 32) == _V4_MAPPED_HIGH:
        return 4, value & 0xFFFFFFFF
    return family, value


def _format_v6(value):
    groups = [(value >> (16 * (7 - i))) & 0xFFFF for i in range(_V6_GROUPS)]
    best_start, best_len, start = -1, 1, -1
    for i in range(_V6_GROUPS + 1):
        if i < _V6_GROUPS and groups[i] == 0:
            start = i if start < 0 else start
            continue
        if start >= 0 and i - start > best_len:
            best_start, best_len = start, i - start
        start = -1
    text = [("%x" % g) for g in groups]
    if best_start < 0:
        return ":".join(text)
    return ":".join(text[:best_start]) + "::" + ":".join(text[best_start + best_len:])


def format_ip(family, value):
    """The canonical text of an address: dotted quad or compressed IPv6."""
    if family == 4:
        return "%d.%d.%d.%d" % (value >> 24, (value >> 16) & 255, (value >> 8) & 255, value & 255)
    return _format_v6(value)


_CLIENT_V6_PREFIX = const(84)   # leading bits of an IPv6 address that name one client
                                # (Postfix 3.8's smtpd_client_ipv6_prefix_length): a host
                                # given a /64 cannot dodge the per-client limits


def client_key(ip_text):
    """What per-client limits count a client under: its IPv4 address, or its IPv6
    address's first _CLIENT_V6_PREFIX bits ("2001:db8::/84")."""
    if ":" not in ip_text:
        return ip_text
    try:
        family, value = unmap(*parse_ip(ip_text))
    except ValueError:
        return ip_text
    if family == 4:
        return format_ip(4, value)
    shift = _V6_BITS - _CLIENT_V6_PREFIX
    return "%s/%d" % (format_ip(6, value >> shift << shift), _CLIENT_V6_PREFIX)


def _bits(family):
    return _V4_BITS if family == 4 else _V6_BITS


class Network:
    """A CIDR network such as 192.168.0.0/16 or ::1/128 (a bare address is a
    single host). Host bits set after the prefix are an error (ValueError)."""

    def __init__(self, text):
        address, slash, prefix = text.partition("/")
        self.family, self.value = parse_ip(address)
        width = _bits(self.family)
        if not slash:
            prefix = str(width)
        if not prefix or len(prefix) > 3 or not only(prefix, _DIGITS) or int(prefix) > width:
            raise ValueError("bad prefix length in %r (0..%d)" % (text, width))
        self.prefix = int(prefix)
        full = (1 << width) - 1
        self.mask = full ^ ((1 << (width - self.prefix)) - 1)
        if self.value & (full ^ self.mask):
            raise ValueError("host bits set in %s: did you mean %s/%d?"
                             % (text, format_ip(self.family, self.value & self.mask), self.prefix))

    def contains(self, ip):
        """True if ip (text or (family, int)) is in this network; an
        IPv4-mapped IPv6 address also matches the IPv4 network."""
        family, value = parse_ip(ip) if isinstance(ip, str) else ip
        if self.family == 4:
            family, value = unmap(family, value)
        return family == self.family and (value & self.mask) == self.value

    def __eq__(self, other):
        return (isinstance(other, Network) and self.family == other.family
                and self.value == other.value and self.prefix == other.prefix)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash((self.family, self.value, self.prefix))

    def __str__(self):
        return "%s/%d" % (format_ip(self.family, self.value), self.prefix)

    def __repr__(self):
        return "Network(%r)" % str(self)


def match_any(networks, ip_text):
    """True if the address is in any of the networks; False for text that is
    not an address."""
    try:
        ip = parse_ip(ip_text)
    except ValueError:
        return False
    for network in networks:
        if network.contains(ip):
            return True
    return False

# meta1lite.smar.dnsbase - what the relay needs of DNS before its first name lookup:
# the lookup errors (qmgr classifies them), the address families of next hops, and
# ip_literal (an address literal is a next hop without a lookup). The resolver
# (dnsresolve.py, which re-exports all of this) is imported at the first name lookup:
# a board relaying to address literals never takes its heap (2.2K on the sim Pico W).
# Owns: the error classes and ip_literal. Must never: look anything up, or import
# dnsresolve.
import socket

FAMILY_INET = int(socket.AF_INET)
FAMILY_INET6 = int(getattr(socket, "AF_INET6", 10))
_IP_CHARS = "0123456789abcdefABCDEF.:%"


class DNSLookupError(Exception):
    """A lookup failed; see PermanentDNSError and TemporaryDNSError."""


class PermanentDNSError(DNSLookupError):
    """The name does not exist or cannot receive mail (bounce)."""


class TemporaryDNSError(DNSLookupError):
    """SERVFAIL, REFUSED, timeout or network error (try again later)."""


class NullMX(PermanentDNSError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail."""


def ip_literal(host):
    """(family, canonical text) of an IP address literal (IPv6 as dnspython prints
    it), or None when host is a name."""
    if not isinstance(host, str) or host.strip(_IP_CHARS):
        return None             # a name: netaddr is not even imported (a small heap)
    from meta1lite import netaddr
    try:
        family, value = netaddr.parse_ip(host)
    except ValueError:
        return None
    if family == 4:
        return FAMILY_INET, netaddr.format_ip(4, value)
    from meta1lite.proto import dns  # the codec: an IPv6 literal's text
    raw = bytes([(value >> (8 * (15 - i))) & 0xFF for i in range(16)])
    return FAMILY_INET6, dns.ipv6_text(raw)

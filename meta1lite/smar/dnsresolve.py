# meta1lite.smar.dnsresolve - smar's DNS resolver: MX and address lookups for delivery.
# Owns: one API (Resolver.resolve_mx, Resolver.resolve_addresses) over two
# transports - dnspython's async resolver on CPython (dnspython_transport.py), and on
# MicroPython (or on request) the sans-I/O codec in meta1lite.proto.dns over UDP with TCP on
# truncation - plus CNAME chasing, RFC 5321 section 5 MX ordering, RFC 7505 null MX,
# and a TTL cache bounded in entries.
# Must never: block the event loop on network I/O, return an answer that does not
# match its question, grow without bound, or differ in its answers between the two
# transports for the same DNS server.
# The codec (meta1lite.proto.dns) is imported at the first lookup (_codec), and this
# module at the first name lookup (smar.resolver): a board relaying to address
# literals needs neither (1.3K and 2.2K of heap). The error classes, the address
# families and ip_literal are dnsbase's, re-exported here.
import errno
import random
import select
import socket

from meta1lite import compat
from meta1lite.const import const
from meta1lite.smar.dnsbase import (  # noqa: F401 - part of this module's API
    FAMILY_INET,
    FAMILY_INET6,
    DNSLookupError,
    NullMX,
    PermanentDNSError,
    TemporaryDNSError,
    ip_literal,
)

RESOLV_CONF = "/etc/resolv.conf"
DNS_PORT = const(53)
DEFAULT_NAMESERVERS = [("127.0.0.1", DNS_PORT)]
MAX_NAMESERVERS = const(3)   # as resolv.conf's MAXNS
_DEFAULT_TIMEOUT_S = const(2)  # per attempt at one nameserver
_SMAR_TIMEOUT_S = const(5)   # smar.dns_timeout's default (a partial configuration)
_DEFAULT_RETRIES = const(2)  # further rounds over all nameservers after the first
MAX_CACHE_ENTRIES = const(256)
MAX_CACHE_TTL = const(86400)
_DEFAULT_NEGATIVE_TTL = const(60)  # NXDOMAIN / no data without an SOA to say otherwise
MAX_NEGATIVE_TTL = const(3600)
MAX_CNAME_HOPS = const(8)
MAX_ADDRESSES = const(16)    # A or AAAA records kept per name, in the server's order
POLL_MIN_S = 0.001           # UDP receive polling interval, doubled up to POLL_MAX_S
POLL_MAX_S = 0.02

BACKENDS = ("codec", "dnspython")
_AGAIN = (errno.EAGAIN, getattr(errno, "EWOULDBLOCK", errno.EAGAIN))
_NXDOMAIN = "nxdomain"       # cache marker
asyncio = compat.asyncio
_codec_module = []              # meta1lite.proto.dns once the first lookup imported it


def _codec():
    # the DNS codec, imported at the first lookup (never, relaying to address literals)
    if not _codec_module:
        from meta1lite.proto import dns
        _codec_module.append(dns)
    return _codec_module[0]


# --- configuration ------------------------------------------------------------------

def read_resolv_conf(path=RESOLV_CONF):
    """Nameservers (host, 53) of a resolv.conf file; else the network stack's DNS
    server (a board: lwIP's from DHCP); else DEFAULT_NAMESERVERS."""
    found = []
    try:
        with open(path) as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    found.append((words[1], DNS_PORT))
                if len(found) >= MAX_NAMESERVERS:
                    break
    except OSError:
        pass
    if not found:
        found = _network_nameservers()
    return found or list(DEFAULT_NAMESERVERS)


def _network_nameservers():
    # a board has no resolv.conf, and lwIP cannot reach 127.0.0.1: its DHCP server's
    # DNS (network.ipconfig, MicroPython 1.23+); [] elsewhere
    try:
        import network
        server = network.ipconfig("dns")
    except (ImportError, AttributeError, OSError, TypeError, ValueError):
        return []
    return [(server, DNS_PORT)] if server and server != "0.0.0.0" else []


def for_config(smar):
    """The Resolver of a configuration's smar section (nameservers, dns_timeout)."""
    return Resolver(smar.get("nameservers") or None,
                    timeout_s=smar.get("dns_timeout") or _SMAR_TIMEOUT_S)


def _check_name(name):
    codec = _codec()
    if not isinstance(name, str):
        raise PermanentDNSError("domain name must be text: %r" % (name,))
    text = codec.normalize_name(name)
    try:
        codec.encode_name(text)
    except codec.DNSError as exc:
        raise PermanentDNSError("invalid domain name %r: %s" % (name, exc))
    if text == ".":
        raise PermanentDNSError("invalid domain name %r" % (name,))
    return text


# --- ordering -----------------------------------------------------------------------

def _shuffle(items):
    for i in range(len(items) - 1, 0, -1):
        j = random.getrandbits(16) % (i + 1)
        items[i], items[j] = items[j], items[i]


def order_mx(records):
    """(preference, host) sorted by preference, random order among equals (RFC 5321 5.1)."""
    by_pref = {}
    for pref, host in records:
        by_pref.setdefault(pref, []).append((pref, host))
    ordered = []
    for pref in sorted(by_pref):
        group = by_pref[pref]
        _shuffle(group)
        ordered.extend(group)
    return ordered


def _unique(items):
    seen = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


# --- the cache ----------------------------------------------------------------------

class _Cache:
    """(name, type) -> value until its TTL runs out; the oldest entry goes first when full."""

    def __init__(self, clock, limit):
        self._clock = clock
        self._limit = limit
        self._entries = {}
        self._seq = 0

    def get(self, key):
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry[0]:
            del self._entries[key]
            return None
        return entry[2]

    def put(self, key, value, ttl):
        if ttl <= 0 or self._limit <= 0:
            return
        if key not in self._entries and len(self._entries) >= self._limit:
            oldest = min(self._entries, key=lambda k: self._entries[k][1])
            del self._entries[oldest]
        self._seq += 1
        self._entries[key] = (self._clock() + ttl, self._seq, value)

    def __len__(self):
        return len(self._entries)

    def clear(self):
        self._entries = {}


# --- the codec transport (MicroPython; CPython on request) -----------------------------

def _random_id():
    try:
        raw = compat.urandom(2)
        return (raw[0] << 8) | raw[1]
    except (AttributeError, NotImplementedError, OSError):
        return random.getrandbits(16)


class _CodecTransport:
    """Queries nameservers over UDP (TCP when truncated) with the sans-I/O codec."""

    def __init__(self, nameservers, timeout_s, retries):
        self.nameservers = nameservers
        self.timeout_s = timeout_s
        self.retries = retries

    async def exchange(self, name, qtype):
        """The first NOERROR/NXDOMAIN Response from the nameservers, else TemporaryDNSError."""
        codec = _codec()
        failed = []
        last = "no nameserver configured"
        for _ in range(self.retries + 1):
            for server in self.nameservers:
                if server in failed:
                    continue
                try:
                    reply = await self._ask(server, name, qtype)
                except (OSError, EOFError, asyncio.TimeoutError, codec.DNSError) as exc:
                    last = "%s:%d: %s" % (server[0], server[1], _describe(exc))
                    continue
                if reply.rcode in (codec.RCODE_NOERROR, codec.RCODE_NXDOMAIN):
                    return reply
                failed.append(server)
                last = "%s:%d answered rcode %d" % (server[0], server[1], reply.rcode)
        raise TemporaryDNSError("%s %s: %s" % (name, codec.TYPE_NAMES[qtype], last))

    async def _ask(self, server, name, qtype):
        codec = _codec()
        qid = _random_id()
        query = codec.build_query(qid, name, qtype)
        reply = await asyncio.wait_for(self._udp(server, query, qid, name, qtype),
                                       self.timeout_s)
        if reply.tc:
            reply = await asyncio.wait_for(
                self._tcp(server, query, qid, name, qtype), self.timeout_s)
        return reply

    async def _udp(self, server, query, qid, name, qtype):
        info = socket.getaddrinfo(server[0], server[1], 0, socket.SOCK_DGRAM)[0]
        sock = socket.socket(info[0], socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(info[-1])   # the kernel binds port 0: a random source port
            sock.send(query)
            return await self._udp_receive(sock, qid, name, qtype)
        finally:
            sock.close()

    async def _udp_receive(self, sock, qid, name, qtype):
        """Poll the non-blocking socket until our answer arrives (the caller times out)."""
        codec = _codec()
        delay = POLL_MIN_S
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while True:
            data = _receive_nowait(sock, codec.EDNS_PAYLOAD) if poller.poll(0) else None
            if data is not None:
                try:
                    return codec.parse_response(data, qid, name, qtype)
                except codec.DNSError:
                    pass             # not our answer or malformed: keep waiting
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX_S)

    async def _tcp(self, server, query, qid, name, qtype):
        codec = _codec()
        reader, writer = await asyncio.open_connection(server[0], server[1])
        try:
            writer.write(codec.frame_tcp(query))
            await writer.drain()
            length = codec.tcp_length(await reader.readexactly(2))
            data = await reader.readexactly(length)
        finally:
            writer.close()
            await writer.wait_closed()
        return codec.parse_response(data, qid, name, qtype)


def _receive_nowait(sock, size):
    """A datagram (up to size bytes: the EDNS payload we advertise) when the poller
    said readable; None if it was gone (EAGAIN)."""
    try:
        return sock.recv(size)
    except OSError as exc:
        if exc.args and exc.args[0] in _AGAIN:
            return None
        raise


def _describe(exc):
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return "%s %s" % (type(exc).__name__, exc)


def _dnspython_available():
    if compat.MICROPYTHON:      # not even imported there (a board's heap)
        return False
    from meta1lite.smar import dnspython_transport
    return dnspython_transport.available()


# --- the resolver -------------------------------------------------------------------

def _follow(answers, name, qtype, ttl, hops):
    """Chase CNAMEs from name inside one answer; return (values, final name, ttl, hops)."""
    codec = _codec()
    while True:
        values = []
        cname = None
        for owner, rtype, rttl, value in answers:
            if (rtype != qtype and rtype != codec.TYPE_CNAME) or \
                    codec.normalize_name(owner) != name:
                continue
            if rtype == qtype:
                values.append(value)
                ttl = min(ttl, rttl)
            elif cname is None:
                cname = (value, rttl)
        if values or cname is None:
            return values, name, ttl, hops
        hops += 1
        if hops > MAX_CNAME_HOPS:
            raise PermanentDNSError("CNAME chain longer than %d at %s" % (MAX_CNAME_HOPS, name))
        name = codec.normalize_name(cname[0])
        ttl = min(ttl, cname[1])


def _negative_ttl(reply):
    if reply.negative_ttl is None:
        return _DEFAULT_NEGATIVE_TTL
    return min(reply.negative_ttl, MAX_NEGATIVE_TTL)


class Resolver:
    """MX and address lookups for smar with one answer shape on both transports.

    nameservers: list of (host, port); empty or None reads /etc/resolv.conf.
    timeout_s: per attempt at one nameserver (real seconds); retries: further rounds
    over all of them. clock: seconds for the cache's TTLs (default compat.monotonic,
    so a simulated clock set through compat ages the cache too).
    backend: None (dnspython where importable, else the codec), "codec" or "dnspython".
    """

    def __init__(self, nameservers=None, timeout_s=_DEFAULT_TIMEOUT_S, retries=_DEFAULT_RETRIES,
                 clock=None, backend=None, cache_entries=MAX_CACHE_ENTRIES):
        self.nameservers = list(nameservers) if nameservers else read_resolv_conf()
        self.timeout_s = timeout_s
        self.retries = retries
        self.backend = self._choose_backend(backend)
        if self.backend == "dnspython":     # CPython only: never imported on a board
            from meta1lite.smar.dnspython_transport import DnspythonTransport as transport
        else:
            transport = _CodecTransport
        self._transport = transport(self.nameservers, timeout_s, retries)
        self._cache = _Cache(clock or compat.monotonic, cache_entries)
        self.queries_sent = 0

    @staticmethod
    def _choose_backend(backend):
        if backend is None:
            return "dnspython" if _dnspython_available() else "codec"
        if backend not in BACKENDS:
            raise ValueError("unknown DNS backend %r" % (backend,))
        if backend == "dnspython" and not _dnspython_available():
            raise ValueError("dnspython is not available on this runtime")
        return backend

    async def resolve_mx(self, domain):
        """(preference, host) per RFC 5321 5.1; [] if no MX; NullMX, Permanent/TemporaryDNSError."""
        codec = _codec()
        name = _check_name(domain)
        records = _unique([(pref, codec.normalize_name(host))
                           for pref, host in await self._lookup(name, codec.TYPE_MX)])
        if not records:
            return []
        usable = [r for r in records if r[1] != "."]
        if not usable:
            raise NullMX("%s publishes a null MX (RFC 7505)" % name)
        return order_mx(usable)

    async def resolve_addresses(self, host, families=None):
        """(family, ip_text) for AAAA then A records of host (CNAMEs followed); [] if none.

        At most MAX_ADDRESSES per family, in the server's order; an IP literal is
        returned as it is (IPv6 in canonical form). families: only these (FAMILY_*)
        are asked for (smar.inet_protocols); None: both.
        """
        literal = ip_literal(host)
        if literal:
            return [literal] if families is None or literal[0] in families else []
        codec = _codec()
        name = _check_name(host)
        found = []
        errors = []
        for qtype, family in ((codec.TYPE_AAAA, FAMILY_INET6), (codec.TYPE_A, FAMILY_INET)):
            if families is not None and family not in families:
                continue
            try:
                found.extend([(family, ip) for ip in await self._lookup(name, qtype)])
            except DNSLookupError as exc:
                errors.append(exc)
        if found or not errors:
            return _unique(found)
        temporary = [e for e in errors if isinstance(e, TemporaryDNSError)]
        raise (temporary or errors)[0]

    def clear_cache(self):
        """Forget every cached answer."""
        self._cache.clear()

    async def _lookup(self, name, qtype):
        key = (name, qtype)
        cached = self._cache.get(key)
        if cached is None:
            cached, ttl = await self._chase(name, qtype)
            self._cache.put(key, cached, min(ttl, MAX_CACHE_TTL))
        if cached == _NXDOMAIN:
            raise PermanentDNSError("%s: no such domain (NXDOMAIN)" % name)
        return cached

    async def _chase(self, name, qtype):
        """Query name, re-querying a CNAME target the answer left open; (values, ttl)."""
        codec = _codec()
        current, ttl, hops = name, MAX_CACHE_TTL, 0
        while True:
            self.queries_sent += 1
            reply = await self._transport.exchange(current, qtype)
            if reply.rcode == codec.RCODE_NXDOMAIN:
                return _NXDOMAIN, min(ttl, _negative_ttl(reply))
            values, target, ttl, hops = _follow(reply.answers, current, qtype, ttl, hops)
            if values:
                if qtype != codec.TYPE_MX:
                    values = values[:MAX_ADDRESSES]
                return values, ttl
            if target == current:
                return [], min(ttl, _negative_ttl(reply))
            current = target

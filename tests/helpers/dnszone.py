# A small authoritative-and-recursive-looking DNS server for tests, built on dnslib.
# Owns: serving a dict of records on one free loopback port over UDP and TCP, with
# NXDOMAIN, SERVFAIL and truncation (TC=1 over UDP, the full answer over TCP) for
# chosen names, and a log of the queries it received. CPython-only; never used by
# the shared code.
#
#   zone = DNSZone({
#       "example.org": [("MX", (10, "mx1.example.org")), ("MX", (20, "mx2.example.org"))],
#       "mx1.example.org": [("A", "127.0.0.2"), ("AAAA", "::1", 60)],   # optional TTL
#       "alias.example.org": [("CNAME", "mx1.example.org")],
#       "nullmx.example": [("MX", (0, "."))],
#   }, servfail={"broken.example"}, truncate={"big.example"})
#   with zone:
#       resolver = Resolver([zone.address])
#
# Names not in the dict (and not listed in servfail/truncate) get NXDOMAIN; a known
# name without the asked type gets NOERROR with no answer and an SOA (minimum
# negative_ttl). CNAMEs are chased inside the zone, as a recursive server would.
import ipaddress
import socket

from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RR, SOA, A
from dnslib.server import DNSLogger, DNSServer

DEFAULT_TTL = 300
NEGATIVE_TTL = 30
MAX_CHASE = 16
BIND_ATTEMPTS = 20
_RDATA = {"A": A, "AAAA": AAAA, "CNAME": CNAME}


def _norm(name):
    return str(name).rstrip(".").lower()


def _rdata(rtype, value):
    if rtype == "MX":
        pref, host = value
        return MX(host, pref)
    if rtype == "AAAA":
        return AAAA(list(ipaddress.IPv6Address(value).packed))
    return _RDATA[rtype](value)


class _ZoneResolver:
    def __init__(self, zone):
        self.zone = zone

    def resolve(self, request, handler):
        zone = self.zone
        qname = _norm(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        zone.log.append((qname, qtype, handler.protocol))
        reply = request.reply()
        if qname in zone.servfail:
            reply.header.rcode = RCODE.SERVFAIL
        elif qname in zone.truncate and handler.protocol == "udp":
            reply.header.tc = 1
        else:
            self._answer(reply, qname, qtype)
        return reply

    def _answer(self, reply, name, qtype):
        for _ in range(MAX_CHASE):
            records = self.zone.records.get(name)
            if records is None:
                reply.header.rcode = RCODE.NXDOMAIN
                break
            matching = [r for r in records if r[0] == qtype]
            cnames = [r for r in records if r[0] == "CNAME"]
            if matching or not cnames or qtype == "CNAME":
                for rec in matching:
                    reply.add_answer(self._rr(name, rec))
                break
            reply.add_answer(self._rr(name, cnames[0]))
            name = _norm(cnames[0][1])
        if not reply.rr:
            reply.add_auth(RR(self.zone.soa_name(name), QTYPE.SOA, ttl=self.zone.negative_ttl,
                              rdata=SOA("ns.test", "hostmaster.test",
                                        (1, 3600, 600, 86400, self.zone.negative_ttl))))

    @staticmethod
    def _rr(name, rec):
        ttl = rec[2] if len(rec) > 2 else DEFAULT_TTL
        return RR(name, getattr(QTYPE, rec[0]), ttl=ttl, rdata=_rdata(rec[0], rec[1]))


class DNSZone:
    """A dnslib DNS server on 127.0.0.1 (UDP and TCP on one free port) serving records."""

    def __init__(self, records, servfail=(), truncate=(), host="127.0.0.1",
                 negative_ttl=NEGATIVE_TTL):
        self.records = dict((_norm(k), list(v)) for k, v in records.items())
        self.servfail = set(_norm(n) for n in servfail)
        self.truncate = set(_norm(n) for n in truncate)
        self.host = host
        self.negative_ttl = negative_ttl
        self.log = []              # (name, type, "udp"|"tcp") per query received
        self._servers = []
        self.port = None

    @property
    def address(self):
        """(host, port) for a resolver's nameserver list."""
        return (self.host, self.port)

    def soa_name(self, name):
        labels = name.split(".")
        return ".".join(labels[-2:]) if len(labels) > 1 else name

    def queries(self, name=None, qtype=None):
        """The logged queries, optionally only those for name and/or type."""
        return [q for q in self.log
                if (name is None or q[0] == _norm(name)) and (qtype is None or q[1] == qtype)]

    def start(self):
        """Bind UDP and TCP on one free port and serve in background threads."""
        resolver = _ZoneResolver(self)
        logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data")
        for _ in range(BIND_ATTEMPTS):
            port = _free_udp_port(self.host)
            try:
                udp = DNSServer(resolver, address=self.host, port=port, logger=logger)
                try:
                    tcp = DNSServer(resolver, address=self.host, port=port, tcp=True,
                                    logger=logger)
                except OSError:
                    udp.server.server_close()
                    raise
            except OSError:
                continue
            self._servers = [udp, tcp]
            self.port = port
            for server in self._servers:
                server.start_thread()
            return self
        raise OSError("no free port for the test DNS server")

    def stop(self):
        """Stop both servers and close their sockets."""
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        self._servers = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _free_udp_port(host):
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


class SilentUDP:
    """A UDP port on loopback that receives and never answers (a dead nameserver)."""

    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.address = self.sock.getsockname()[:2]

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


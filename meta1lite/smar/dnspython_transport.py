# meta1lite.smar.dnspython_transport - smar's DNS queries through dnspython's async
# resolver (CPython; dnsresolve.Resolver's "dnspython" backend, its default there).
# Owns: turning dnspython's answers and errors into the codec's Response and
# dnsresolve's TemporaryDNSError, so that both backends give the same results
# (tests/test_dns_resolver.py). Must never: be used on MicroPython (no dnspython
# there: the module imports, available() says False), or cache (the resolver does).
from meta1lite.proto import dns as codec
from meta1lite.smar.dnsbase import TemporaryDNSError

try:
    import dns.asyncresolver as _dnspython_resolver
    import dns.exception as _dnspython_exception
    import dns.name as _dnspython_name
    import dns.nameserver as _dnspython_nameserver
    import dns.resolver as _dnspython_sync
except ImportError:
    _dnspython_resolver = None


def available():
    """True where dnspython (2.4+, with dns.nameserver) imports."""
    return _dnspython_resolver is not None


def _dnspython_text(name):
    return name.to_text(omit_final_dot=True)


def _dnspython_value(rdata):
    rtype = rdata.rdtype
    if rtype in (codec.TYPE_A, codec.TYPE_AAAA):
        return rdata.address
    if rtype == codec.TYPE_MX:
        return (rdata.preference, _dnspython_text(rdata.exchange))
    return _dnspython_text(rdata.target)


def _from_message(message, name, qtype):
    """A codec.Response with the same shape from a dnspython message."""
    answers = []
    for rrset in message.answer:
        if rrset.rdclass != codec.CLASS_IN or rrset.rdtype not in codec.TYPE_NAMES:
            continue
        for rdata in rrset:
            if len(answers) >= codec.MAX_ANSWERS:
                break
            answers.append((_dnspython_text(rrset.name), rrset.rdtype, rrset.ttl,
                            _dnspython_value(rdata)))
    negative_ttl = None
    for rrset in message.authority:
        if rrset.rdtype == codec.TYPE_SOA and len(rrset):
            negative_ttl = min(rrset.ttl, rrset[0].minimum)
    return codec.Response(message.id, message.rcode(), False, False, name, qtype,
                          answers, negative_ttl)


class DnspythonTransport:
    """Queries through dns.asyncresolver with the same nameservers, ports and timeouts."""

    def __init__(self, nameservers, timeout_s, retries):
        resolver = _dnspython_resolver.Resolver(configure=False)
        resolver.nameservers = [_dnspython_nameserver.Do53Nameserver(host, port)
                                for host, port in nameservers]
        resolver.timeout = timeout_s
        resolver.lifetime = timeout_s * (retries + 1) * max(1, len(nameservers))
        resolver.use_edns(0, 0, codec.EDNS_PAYLOAD)
        resolver.retry_servfail = False
        self._resolver = resolver

    async def exchange(self, name, qtype):
        """The NOERROR/NXDOMAIN answer as a codec.Response, else TemporaryDNSError."""
        qname = _dnspython_name.from_text(name)
        try:
            answer = await self._resolver.resolve(qname, qtype, raise_on_no_answer=False,
                                                  search=False)
            return _from_message(answer.response, name, qtype)
        except _dnspython_sync.NXDOMAIN as exc:
            response = exc.responses().get(qname)
            if response is None:
                return codec.Response(0, codec.RCODE_NXDOMAIN, False, False, name, qtype,
                                      [], None)
            return _from_message(response, name, qtype)
        except _dnspython_exception.DNSException as exc:
            raise TemporaryDNSError("%s %s: %s" % (name, codec.TYPE_NAMES[qtype], exc))

# Unit tests of the sans-I/O DNS codec (meta1lite.proto.dns) and of the resolver's
# pure parts (MX ordering, address literals, CNAME chasing, cache) over a fake
# transport. Shared subset: runs under CPython (pytest) and MicroPython (upy_runner).
import struct

from support import raises

from meta1lite.proto import dns
from meta1lite.smar import dnsresolve

QID = 0x1234
RESPONSE_FLAGS = 0x8180   # QR, RD, RA


def _name(text):
    return dns.encode_name(text)


def _rr(owner, rtype, ttl, rdata, rclass=dns.CLASS_IN):
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def _question(qname="example.org", qtype=dns.TYPE_MX):
    return _name(qname) + struct.pack("!HH", qtype, dns.CLASS_IN)


def _message(records, counts, qid=QID, flags=RESPONSE_FLAGS, question=None, qdcount=1):
    if question is None:
        question = _question()
    header = struct.pack("!HHHHHH", qid, flags, qdcount, counts[0], counts[1], counts[2])
    return header + question + b"".join(records)


PTR_QNAME = b"\xc0\x0c"   # the question's name, right after the header


def _sample():
    """A compressed MX response: two MX, a CNAME, A and AAAA records."""
    records = [
        _rr(PTR_QNAME, dns.TYPE_MX, 300, b"\x00\x0a\x03mx1" + PTR_QNAME),
        _rr(PTR_QNAME, dns.TYPE_MX, 300, b"\x00\x14\x03mx2" + PTR_QNAME),
        _rr(b"\x05alias" + PTR_QNAME, dns.TYPE_CNAME, 60, b"\x03mx1" + PTR_QNAME),
        _rr(b"\x03mx1" + PTR_QNAME, dns.TYPE_A, 30, b"\x7f\x00\x00\x02"),
        _rr(b"\x03mx1" + PTR_QNAME, dns.TYPE_AAAA, 30,
            b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01"),
    ]
    return _message(records, (5, 0, 0))


def test_build_query_bytes():
    q = dns.build_query(0xBEEF, "Example.ORG.", dns.TYPE_MX, None)
    assert q == (b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
                 b"\x07Example\x03ORG\x00\x00\x0f\x00\x01")


def test_build_query_with_edns():
    q = dns.build_query(1, "a.example", dns.TYPE_AAAA)
    assert q[10:12] == b"\x00\x01"
    assert q.endswith(b"\x00\x00\x29" + struct.pack("!H", dns.EDNS_PAYLOAD) + b"\x00" * 6)
    assert dns.build_query(1, "a.example", dns.TYPE_A, 4096)[-8:-6] == b"\x10\x00"


def test_build_query_rejects_bad_input():
    raises(dns.DNSError, dns.build_query, 70000, "a.example", dns.TYPE_A)
    raises(dns.DNSError, dns.build_query, 1, "a.example", 99)
    raises(dns.DNSError, dns.build_query, 1, "a.example", dns.TYPE_A, 100)


def test_encode_name_limits():
    assert dns.encode_name(".") == b"\x00"
    assert dns.encode_name("a.b") == b"\x01a\x01b\x00"
    assert dns.encode_name("x" * 63 + ".org")[0] == 63
    raises(dns.DNSError, dns.encode_name, "x" * 64 + ".org")
    raises(dns.DNSError, dns.encode_name, "a..b")
    raises(dns.DNSError, dns.encode_name, "a b.org")
    raises(dns.DNSError, dns.encode_name, "caf\u00e9.example")
    raises(dns.DNSError, dns.encode_name, ".".join(["abcdefgh"] * 30))
    raises(dns.DNSError, dns.encode_name, b"bytes.example")


def test_tcp_framing():
    msg = dns.build_query(7, "a.example", dns.TYPE_A)
    framed = dns.frame_tcp(msg)
    assert dns.tcp_length(framed[:2]) == len(msg) and framed[2:] == msg
    raises(dns.DNSError, dns.tcp_length, b"\x00")
    raises(dns.DNSError, dns.tcp_length, b"\x00\x05")
    raises(dns.DNSError, dns.frame_tcp, _Oversized())


class _Oversized:
    """Claims a length over 65535 without using the memory (boards have little)."""

    def __len__(self):
        return dns.MAX_MESSAGE_LEN + 1


def test_parse_compressed_response():
    r = dns.parse_response(_sample(), QID, "example.org", dns.TYPE_MX)
    assert (r.id, r.rcode, r.tc, r.qname, r.qtype) == (QID, 0, False, "example.org", 15)
    assert r.answers == [
        ("example.org", dns.TYPE_MX, 300, (10, "mx1.example.org")),
        ("example.org", dns.TYPE_MX, 300, (20, "mx2.example.org")),
        ("alias.example.org", dns.TYPE_CNAME, 60, "mx1.example.org"),
        ("mx1.example.org", dns.TYPE_A, 30, "127.0.0.2"),
        ("mx1.example.org", dns.TYPE_AAAA, 30, "2001:db8::1"),
    ]


def test_question_must_match():
    msg = _sample()
    raises(dns.DNSError, dns.parse_response, msg, QID + 1, "example.org", dns.TYPE_MX)
    raises(dns.DNSError, dns.parse_response, msg, QID, "example.net", dns.TYPE_MX)
    raises(dns.DNSError, dns.parse_response, msg, QID, "example.org", dns.TYPE_A)
    assert dns.parse_response(msg, QID, "EXAMPLE.org.", dns.TYPE_MX).answers


def test_query_is_not_a_response():
    query = dns.build_query(QID, "example.org", dns.TYPE_MX)
    raises(dns.DNSError, dns.parse_response, query, QID, "example.org", dns.TYPE_MX)


def test_truncated_at_every_length():
    msg = _sample()
    for cut in range(len(msg)):
        raises(dns.DNSError, dns.parse_response, msg[:cut], QID, "example.org", dns.TYPE_MX)


def test_trailing_garbage_is_ignored_but_counts_are_checked():
    assert dns.parse_response(_sample() + b"\x00\x01", QID, "example.org", dns.TYPE_MX)
    header = bytearray(_sample())
    header[7] = 6   # one answer more than present
    raises(dns.DNSError, dns.parse_response, bytes(header), QID, "example.org", dns.TYPE_MX)
    header[6], header[7] = 0xFF, 0xFF
    raises(dns.DNSError, dns.parse_response, bytes(header), QID, "example.org", dns.TYPE_MX)


def test_pointer_loops_and_forward_pointers():
    self_loop = _rr(b"\xc0\x1d", dns.TYPE_A, 1, b"\x01\x02\x03\x04")    # points at itself
    msg = _message([self_loop], (1, 0, 0))
    raises(dns.DNSError, dns.parse_response, msg, QID, "example.org", dns.TYPE_MX)
    forward = _rr(b"\xc0\x30", dns.TYPE_A, 1, b"\x01\x02\x03\x04")
    msg = _message([forward, b"\x00" * 40], (1, 0, 0))
    raises(dns.DNSError, dns.parse_response, msg, QID, "example.org", dns.TYPE_MX)


def test_too_many_pointer_hops():
    start = dns.HEADER_LEN + len(_question()) + 2 + dns.RR_FIXED_LEN   # rdata of record 1
    chain = bytearray()
    prev = 0x0C
    for i in range(dns.MAX_POINTER_HOPS + 1):
        chain.extend(struct.pack("!H", 0xC000 | prev))
        prev = start + 2 * i
    holder = _rr(PTR_QNAME, 99, 1, bytes(chain))
    owner = struct.pack("!H", 0xC000 | prev)
    msg = _message([holder, _rr(owner, dns.TYPE_A, 1, b"\x01\x02\x03\x04")], (2, 0, 0))
    err = raises(dns.DNSError, dns.parse_response, msg, QID, "example.org", dns.TYPE_MX)
    assert "pointers" in str(err)
    short = _rr(struct.pack("!H", 0xC000 | (start + 2)), dns.TYPE_A, 1, b"\x01\x02\x03\x04")
    msg = _message([holder, short], (2, 0, 0))
    assert dns.parse_response(msg, QID, "example.org", dns.TYPE_MX).answers == [
        ("example.org", dns.TYPE_A, 1, "1.2.3.4")]


def test_bad_labels():
    for owner in (b"\x40" + b"x" * 64 + b"\x00", b"\x80\x00", b"\x05ab\x00"):
        msg = _message([_rr(owner, dns.TYPE_A, 1, b"\x01\x02\x03\x04")], (1, 0, 0))
        raises(dns.DNSError, dns.parse_response, msg, QID, "example.org", dns.TYPE_MX)
    long_name = (b"\x3f" + b"a" * 63) * 4 + b"\x00"     # 257 octets
    msg = _message([_rr(long_name, dns.TYPE_A, 1, b"\x01\x02\x03\x04")], (1, 0, 0))
    raises(dns.DNSError, dns.parse_response, msg, QID, "example.org", dns.TYPE_MX)


def test_bad_rdata_lengths():
    for rtype, rdata in ((dns.TYPE_A, b"\x01\x02\x03"), (dns.TYPE_AAAA, b"\x00" * 4),
                         (dns.TYPE_MX, b"\x00\x0a"), (dns.TYPE_MX, b"\x00\x0a\x00\x00"),
                         (dns.TYPE_CNAME, b"\x01a\x00\x00")):
        msg = _message([_rr(PTR_QNAME, rtype, 1, rdata)], (1, 0, 0))
        raises(dns.DNSError, dns.parse_response, msg, QID, "example.org", dns.TYPE_MX)


def test_bit_flips_raise_only_dns_error():
    msg = _sample()
    for pos in range(len(msg)):
        for bit in (0x01, 0x40, 0x80):
            flipped = bytearray(msg)
            flipped[pos] ^= bit
            try:
                dns.parse_response(bytes(flipped), QID, "example.org", dns.TYPE_MX)
            except dns.DNSError:
                pass


def test_truncated_flag_skips_records():
    msg = bytearray(_sample()[:40])
    msg[2] |= 0x02
    r = dns.parse_response(bytes(msg), QID, "example.org", dns.TYPE_MX)
    assert r.tc and r.answers == []
    bare = struct.pack("!HHHHHH", QID, RESPONSE_FLAGS | dns.FLAG_TC, 0, 0, 0, 0)
    assert dns.parse_response(bare, QID, "example.org", dns.TYPE_MX).tc


def test_error_rcodes_and_negative_ttl():
    servfail = struct.pack("!HHHHHH", QID, RESPONSE_FLAGS | 2, 0, 0, 0, 0)
    assert dns.parse_response(servfail, QID, "a.example", dns.TYPE_A).rcode == 2
    soa = _name("ns.example") + _name("host.example") + struct.pack("!IIIII", 1, 2, 3, 4, 45)
    msg = _message([_rr(PTR_QNAME, dns.TYPE_SOA, 600, soa)], (0, 1, 0), flags=0x8183)
    r = dns.parse_response(msg, QID, "example.org", dns.TYPE_MX)
    assert (r.rcode, r.answers, r.negative_ttl) == (dns.RCODE_NXDOMAIN, [], 45)


def test_edns_extended_rcode_and_unknown_records():
    opt = _rr(b"\x00", dns.TYPE_OPT, 0x01000000, b"", rclass=1232)
    txt = _rr(PTR_QNAME, 16, 5, b"\x02hi")
    chaos = _rr(PTR_QNAME, dns.TYPE_A, 5, b"\x01\x02\x03\x04", rclass=3)
    msg = _message([txt, chaos, opt], (2, 0, 1))
    r = dns.parse_response(msg, QID, "example.org", dns.TYPE_MX)
    assert r.rcode == 16 and r.answers == []


def test_answers_are_bounded():
    count = dns.MAX_ANSWERS + 10
    records = [_rr(PTR_QNAME, dns.TYPE_A, 5, bytes([10, 0, i // 256, i % 256]))
               for i in range(count)]
    r = dns.parse_response(_message(records, (count, 0, 0)), QID, "example.org", dns.TYPE_MX)
    assert len(r.answers) == dns.MAX_ANSWERS and r.answers[-1][3] == "10.0.0.63"
    assert r.answers[0][0] is r.answers[1][0]          # one owner string per RRset
    too_many = _message([], (dns.MAX_RECORDS - 10, 10, 1))
    err = raises(dns.DNSError, dns.parse_response, too_many, QID, "example.org", dns.TYPE_MX)
    assert "more than" in str(err)


def test_escaped_label_text():
    owner = b"\x04a.b\xff" + PTR_QNAME
    msg = _message([_rr(owner, dns.TYPE_A, 5, b"\x01\x02\x03\x04")], (1, 0, 0))
    r = dns.parse_response(msg, QID, "example.org", dns.TYPE_MX)
    assert r.answers[0][0] == "a\\.b\\255.example.org"


def test_ipv6_text_like_dnspython():
    cases = {
        "00000000000000000000000000000000": "::",
        "00000000000000000000000000000001": "::1",
        "20010db8000000000000000000000001": "2001:db8::1",
        "00010000000000010000000000000001": "1:0:0:1::1",
        "00000000000000000000ffff01020304": "::ffff:1.2.3.4",
        "00000000000000000000000001020304": "::1.2.3.4",
        "00010000000000000000000000000000": "1::",
        "00010002000300040005000600070008": "1:2:3:4:5:6:7:8",
        "20010db8000000010000000000000001": "2001:db8:0:1::1",
        "00000000000100000000000000000000": "0:0:1::",
        "20010db8000100000001000000000000": "2001:db8:1:0:1::",
    }
    for hexa, text in cases.items():
        raw = bytes([int(hexa[i:i + 2], 16) for i in range(0, 32, 2)])
        assert dns.ipv6_text(raw) == text, (hexa, dns.ipv6_text(raw))


# --- the resolver's pure parts ----------------------------------------------------

def test_order_mx_sorts_and_shuffles_equals():
    records = [(20, "c"), (10, "a"), (10, "b"), (30, "d")]
    seen = set()
    for _ in range(64):
        ordered = dnsresolve.order_mx(records)
        assert [p for p, _ in ordered] == [10, 10, 20, 30]
        assert sorted(ordered) == sorted(records)
        seen.add(ordered[0][1])
    assert seen == {"a", "b"}


def test_address_literals():
    v4, v6 = dnsresolve.FAMILY_INET, dnsresolve.FAMILY_INET6
    assert dnsresolve.ip_literal("192.0.2.1") == (v4, "192.0.2.1")
    assert dnsresolve.ip_literal("192.0.2.256") is None
    assert dnsresolve.ip_literal("mx.example") is None
    assert dnsresolve.ip_literal("2001:DB8:0:0::1") == (v6, "2001:db8::1")
    assert dnsresolve.ip_literal("1:2:3:4:5:6:7:8") == (v6, "1:2:3:4:5:6:7:8")
    assert dnsresolve.ip_literal("1:2:3") is None
    assert dnsresolve.ip_literal("1::2::3") is None
    assert dnsresolve.ip_literal("12345::") is None


def test_read_resolv_conf():
    from support import fresh_dir
    path = fresh_dir("resolv") + "/resolv.conf"
    with open(path, "w") as f:
        f.write("# comment\nsearch home.arpa\nnameserver 192.0.2.53\nnameserver ::1\n")
    assert dnsresolve.read_resolv_conf(path) == [("192.0.2.53", 53), ("::1", 53)]
    assert dnsresolve.read_resolv_conf(path + ".missing") == dnsresolve.DEFAULT_NAMESERVERS


class FakeTransport:
    """Answers from a dict {(name, type): (rcode, answers, negative_ttl)}; counts queries."""

    def __init__(self, table):
        self.table = table
        self.asked = []

    async def exchange(self, name, qtype):
        self.asked.append((name, qtype))
        entry = self.table.get((name, qtype))
        if entry is None:
            raise dnsresolve.TemporaryDNSError("timed out")
        return dns.Response(1, entry[0], False, False, name, qtype, entry[1], entry[2])


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


TABLE = {
    ("example.org", dns.TYPE_MX): (0, [("example.org", dns.TYPE_MX, 300, (10, "MX1.example.org.")),
                                       ("example.org", dns.TYPE_MX, 300, (10, "mx1.example.org"))],
                                   None),
    ("null.example", dns.TYPE_MX): (0, [("null.example", dns.TYPE_MX, 300, (0, "."))], None),
    ("nx.example", dns.TYPE_MX): (3, [], 20),
    ("nomx.example", dns.TYPE_MX): (0, [], None),
    ("alias.example", dns.TYPE_A): (0, [("alias.example", dns.TYPE_CNAME, 50, "far.example")],
                                    None),
    ("alias.example", dns.TYPE_AAAA): (0, [("alias.example", dns.TYPE_CNAME, 50, "far.example")],
                                       None),
    ("far.example", dns.TYPE_A): (0, [("far.example", dns.TYPE_A, 100, "192.0.2.7")], None),
    ("far.example", dns.TYPE_AAAA): (0, [], 40),
    ("loop.example", dns.TYPE_A): (0, [("loop.example", dns.TYPE_CNAME, 5, "loop.example")],
                                   None),
}


def _resolver(table=TABLE, entries=dnsresolve.MAX_CACHE_ENTRIES):
    clock = FakeClock()
    r = dnsresolve.Resolver([("192.0.2.1", 53)], backend="codec", clock=clock,
                            cache_entries=entries)
    r._transport = FakeTransport(table)
    return r, clock


def _run(coro):
    import asyncio
    return asyncio.run(coro)


def _error_of(coro):
    try:
        _run(coro)
    except dnsresolve.DNSLookupError as exc:
        return exc
    raise AssertionError("no DNSLookupError")


def test_resolver_answers_over_fake_transport():
    r, _ = _resolver()
    assert _run(r.resolve_mx("Example.ORG.")) == [(10, "mx1.example.org")]
    assert _run(r.resolve_mx("nomx.example")) == []
    assert isinstance(_error_of(r.resolve_mx("null.example")), dnsresolve.NullMX)
    err = _error_of(r.resolve_mx("nx.example"))
    assert isinstance(err, dnsresolve.PermanentDNSError) and not isinstance(err, dnsresolve.NullMX)
    assert isinstance(_error_of(r.resolve_mx("down.example")), dnsresolve.TemporaryDNSError)
    assert isinstance(_error_of(r.resolve_mx("bad name.example")), dnsresolve.PermanentDNSError)
    assert isinstance(_error_of(r.resolve_addresses("loop.example")),
                      dnsresolve.DNSLookupError)


def test_resolver_requeries_open_cname_and_caches():
    r, clock = _resolver()
    addrs = _run(r.resolve_addresses("alias.example"))
    assert addrs == [(dnsresolve.FAMILY_INET, "192.0.2.7")]
    asked = list(r._transport.asked)
    assert ("far.example", dns.TYPE_A) in asked
    assert _run(r.resolve_addresses("alias.example")) == addrs
    assert r._transport.asked == asked                  # all from the cache
    clock.now += 51                                     # the CNAME's TTL ran out
    _run(r.resolve_addresses("alias.example"))
    assert len(r._transport.asked) > len(asked)


def test_resolver_negative_cache_and_bound():
    r, clock = _resolver(entries=2)
    _error_of(r.resolve_mx("nx.example"))
    _error_of(r.resolve_mx("nx.example"))
    assert r._transport.asked.count(("nx.example", dns.TYPE_MX)) == 1
    clock.now += 21
    _error_of(r.resolve_mx("nx.example"))
    assert r._transport.asked.count(("nx.example", dns.TYPE_MX)) == 2
    _run(r.resolve_mx("example.org"))
    _run(r.resolve_mx("nomx.example"))
    assert len(r._cache) == 2
    _error_of(r.resolve_mx("nx.example"))               # evicted as the oldest
    assert r._transport.asked.count(("nx.example", dns.TYPE_MX)) == 3

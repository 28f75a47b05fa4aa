# Unit tests of smar's shared logic (aliases, routes, next hops over a fake
# resolver) and of smtpc's From: rewrite filter. Shared subset: runs under
# CPython (pytest) and the MicroPython unix port (tests/helpers/upy_runner.py).
from support import fresh_dir, raises

from meta1lite import compat, conf, headers, smtpc
from meta1lite.smar import dnsresolve, routes
from meta1lite.smar import resolver as smar
from meta1lite.smar.aliases import AliasError, Aliases, UnknownAddress, parse

UPY_HEAP = "384K"   # conf + smar + smtpc + the client core compiled from source

BASE = """hostname = "relay.test";
smtps { local_domains = { home.test }; }
smar {
    %s
    route "example.org" { via = "[smtp.isp.test]:587"; tls = required; auth = "isp";
                          rewrite_sender = "me@isp.test"; rewrite_from_header = yes; }
    route ".corp.test" { via = "gw.corp.test:2525"; }
    route "corp.test" { via = "[10.0.0.1]:25"; tls = off; }
    sender_route "*@work.test" { via = "[smtp.work.test]:465"; }
    sender_route "boss@home.test" { via = "[boss.test]:25"; }
}
smtpc { port = 2500; credentials "isp" { user = "me"; password_file = "%s"; } }
"""

ALIASES = """# test aliases
root: admin@example.org
postmaster: root
admin@home.test: a@elsewhere.test,
    b@elsewhere.test   # continuation
team: root, "c@elsewhere.test", <d@elsewhere.test>
loop1: loop2
loop2: loop1
self: self, e@elsewhere.test
prog: |/usr/bin/false, f@elsewhere.test
broken line without colon
"""


def _resolver(aliases=True, password="s3cret\n"):
    d = fresh_dir("smar")
    with open(d + "/pw", "w") as f:
        f.write(password)
    with open(d + "/aliases", "w") as f:
        f.write(ALIASES)
    text = BASE % ('aliases = "%s/aliases";' % d if aliases else "", d + "/pw")
    return smar.AddressResolver(conf.loads(text), resolver=FakeDNS())


class FakeDNS:
    """resolve_mx / resolve_addresses over dicts; names in `temp` fail temporarily."""

    def __init__(self):
        self.mx = {"two.test": [(10, "mx1.two.test"), (20, "mx2.two.test")],
                   "null.test": "null", "bad.test": "temp"}
        self.addrs = {"mx1.two.test": [(2, "127.0.0.2")],
                      "mx2.two.test": [(10, "::1"), (2, "127.0.0.3")],
                      "plain.test": [(2, "192.0.2.1")], "smtp.isp.test": [(2, "192.0.2.9")],
                      "gw.corp.test": [(2, "192.0.2.7")]}

    async def resolve_mx(self, name):
        value = self.mx.get(name, [])
        if value == "null":
            raise dnsresolve.NullMX(name)
        if value == "temp":
            raise dnsresolve.TemporaryDNSError(name)
        if name.startswith("nx"):
            raise dnsresolve.PermanentDNSError(name)
        return value

    async def resolve_addresses(self, host, families=None):
        if host.startswith("nx"):
            raise dnsresolve.PermanentDNSError(host)
        return [a for a in self.addrs.get(host, []) if families is None or a[0] in families]


def _hops(ar, route, domain):
    return compat.asyncio.run(ar.next_hops(route, domain))


def test_local_domains_are_the_hostname_and_local_domains():
    ar = _resolver()
    assert ar.is_local("relay.test") and ar.is_local("HOME.test.") and ar.is_local("")
    assert not ar.is_local("example.org")


def test_knows_local_by_local_part_or_whole_address():
    ar = _resolver()
    assert ar.knows_local("root@relay.test") and ar.knows_local("ROOT@home.test")
    assert ar.knows_local("admin@home.test")
    assert not ar.knows_local("admin@relay.test")      # whole-address key for home.test only
    assert not ar.knows_local("nobody@relay.test")


def test_without_aliases_root_and_postmaster_are_unknown():
    ar = _resolver(aliases=False)
    assert not ar.knows_local("postmaster@relay.test")
    raises(UnknownAddress, ar.expand, "root@relay.test")


def test_expand_follows_aliases_recursively():
    ar = _resolver()
    assert ar.expand("postmaster@relay.test") == ["admin@example.org"]
    assert ar.expand("admin@home.test") == ["a@elsewhere.test", "b@elsewhere.test"]
    assert ar.expand("team@home.test") == ["admin@example.org", "c@elsewhere.test",
                                            "d@elsewhere.test"]
    assert ar.expand("x@example.org") == ["x@example.org"]


def test_expand_unknown_and_loops():
    ar = _resolver()
    raises(UnknownAddress, ar.expand, "nobody@relay.test")
    raises(AliasError, ar.expand, "loop1@relay.test")
    assert ar.expand("self@relay.test") == ["e@elsewhere.test"]


def test_programs_and_files_are_not_delivered():
    ar = _resolver()
    assert ar.expand("prog@relay.test") == ["f@elsewhere.test"]


def test_alias_expansion_is_bounded():
    lines = ["a%d: a%d, x%d@far.test" % (i, i + 1, i) for i in range(20)]
    deep = Aliases(parse(lines), lambda d: d in ("", "relay.test"))
    raises(AliasError, deep.expand, "a0@relay.test")
    wide = Aliases(parse(["big: " + ", ".join(["u%d@far.test" % i for i in range(150)])]),
                   lambda d: d == "")
    assert len(wide.expand("big")) == 100


def test_route_by_recipient_domain():
    ar = _resolver()
    r = ar.route("a@relay.test", "x@Example.ORG")
    assert (r.via, r.host, r.port, r.key) == ("direct", "smtp.isp.test", 587, "[smtp.isp.test]:587")
    assert r.tls == "required" and r.credentials == ("me", "s3cret")
    assert r.rewrite_sender == "me@isp.test" and r.rewrite_from_header
    assert "s3cret" not in repr(r)
    sub = ar.route("a@relay.test", "x@a.b.corp.test")
    assert (sub.via, sub.key, sub.port) == ("lookup", "gw.corp.test:2525", 2525)
    exact = ar.route("a@relay.test", "x@corp.test")
    assert exact.key == "[10.0.0.1]:25" and exact.tls == "off"


def test_default_route_is_mx_per_domain_with_smtpc_port():
    ar = _resolver()
    r = ar.route("a@relay.test", "x@two.test")
    assert (r.via, r.port, r.key, r.tls) == ("mx", 2500, "mx:two.test", "opportunistic")
    assert ar.route("", "y@other.test").key == "mx:other.test"


def test_sender_route_comes_first():
    ar = _resolver()
    assert ar.route("anyone@work.test", "x@example.org").key == "[smtp.work.test]:465"
    assert ar.route("Boss@home.test", "x@two.test").key == "[boss.test]:25"
    assert ar.route("other@home.test", "x@two.test").key == "mx:two.test"


def test_unreadable_password_file_marks_the_route():
    d = fresh_dir("smarpw")
    cfg = conf.loads(BASE % ("", d + "/missing"))
    r = smar.AddressResolver(cfg, resolver=FakeDNS()).route("a@relay.test", "x@example.org")
    assert r.credentials is None and "password_file" in r.error


def test_mx_hops_in_preference_order_with_all_addresses():
    ar = _resolver()
    hops = _hops(ar, ar.route("a@relay.test", "x@two.test"), "two.test")
    assert [(h.host, h.ip, h.port) for h in hops] == [
        ("mx1.two.test", "127.0.0.2", 2500), ("mx2.two.test", "::1", 2500),
        ("mx2.two.test", "127.0.0.3", 2500)]
    assert hops[0].relay() == "mx1.two.test[127.0.0.2]:2500"


def test_inet_protocols_ipv4_leaves_ipv6_hops_out():
    # a board whose lwIP has no IPv6 (stm32): an IPv6 hop there is a DNS query for
    # the literal, blocking the loop, then a failure, at every delivery
    ar = _resolver()
    cfg = ar.cfg
    cfg["smar"]["inet_protocols"] = "ipv4"
    ar.reload(cfg)
    hops = _hops(ar, ar.route("a@relay.test", "x@two.test"), "two.test")
    assert [h.ip for h in hops] == ["127.0.0.2", "127.0.0.3"]


def test_no_mx_falls_back_to_the_address():
    ar = _resolver()
    assert [h.ip for h in _hops(ar, ar.route("", "x@plain.test"), "plain.test")] == ["192.0.2.1"]


def test_dns_errors_keep_their_class():
    ar = _resolver()
    route = ar.route("", "x@any.test")
    for domain, err in (("null.test", dnsresolve.NullMX), ("nx.test", dnsresolve.PermanentDNSError),
                        ("bad.test", dnsresolve.TemporaryDNSError),
                        ("nothing.test", dnsresolve.PermanentDNSError)):
        exc = raises(dnsresolve.DNSLookupError, _hops, ar, route, domain)
        assert isinstance(exc, err), (domain, exc)
    assert not isinstance(raises(dnsresolve.DNSLookupError, _hops, ar, route, "bad.test"),
                          dnsresolve.PermanentDNSError)


def test_relay_hops_direct_and_lookup():
    ar = _resolver()
    direct = _hops(ar, ar.route("", "x@example.org"), "example.org")
    assert [(h.host, h.ip, h.port) for h in direct] == [("smtp.isp.test", "192.0.2.9", 587)]
    literal = _hops(ar, ar.route("", "x@corp.test"), "corp.test")
    assert [(h.host, h.ip, h.port) for h in literal] == [("10.0.0.1", "10.0.0.1", 25)]
    lookup = _hops(ar, ar.route("", "x@a.corp.test"), "a.corp.test")
    assert [(h.host, h.ip) for h in lookup] == [("gw.corp.test", "192.0.2.7")]


def test_a_missing_relay_is_temporary_never_a_bounce():
    route = routes.Route("x", "direct", "nx.relay.test", 25)
    exc = raises(dnsresolve.DNSLookupError, _hops, _resolver(), route, "x.test")
    assert isinstance(exc, dnsresolve.TemporaryDNSError)


def test_parse_via():
    assert routes.parse_via("mx") == ("mx", None, None)
    assert routes.parse_via("[::1]:2525") == ("direct", "::1", 2525)
    assert routes.parse_via("[smtp.x]") == ("direct", "smtp.x", 25)
    assert routes.parse_via("smtp.x:587") == ("lookup", "smtp.x", 587)


# --- smtpc's From: header rewrite (a streaming filter) ---

def _rewrite(address, chunks):
    rw = headers.FromRewriter(address)
    return b"".join([rw.feed(c) for c in chunks]) + rw.finish()


def test_from_rewrite_keeps_display_name_and_body():
    msg = (b"Subject: hi\r\nFrom: Router Root\r\n <root@router.lan>\r\nTo: x@y\r\n\r\n"
           b"From: not a header\r\n")
    out = _rewrite("me@isp.test", [msg[i:i + 7] for i in range(0, len(msg), 7)])
    assert out == (b"Subject: hi\r\nFrom: Router Root <me@isp.test>\r\nTo: x@y\r\n\r\n"
                   b"From: not a header\r\n")


def test_from_rewrite_plain_address_and_no_header_end():
    assert _rewrite("me@isp.test", [b"from: root@router\r\nX: 1"]) == \
        b"From: me@isp.test\r\nX: 1"
    assert _rewrite("me@isp.test", [b"X: 1\r\n\r\nbody"]) == b"X: 1\r\n\r\nbody"


def test_rewrites_follow_the_route():
    route = routes.Route("r", "direct", "h", 25, rewrite_sender="me@isp.test",
                       rewrite_from_header=True)
    job = smtpc.Job("Q1", "root@router", [(0, "a@b")])
    assert smtpc.envelope_sender(route, job) == "me@isp.test"
    assert smtpc.from_rewrite(route, job) == "me@isp.test"
    bounce = smtpc.Job("Q2", "", [(0, "a@b")])
    assert smtpc.envelope_sender(route, bounce) == "" and smtpc.from_rewrite(route, bounce) is None


def test_inet_protocols_leaves_address_literals_of_the_other_family_out():
    # smar.inet_protocols = ipv4 on a board whose lwIP has no IPv6: an IPv6 address
    # literal (a route's [2001:db8::25], an MX host that is a bare address) must not
    # become a hop either, as Postfix skips a numeric host of a family that
    # inet_protocols leaves out
    d = fresh_dir("smar6")
    with open(d + "/pw", "w") as f:
        f.write("pw\n")
    text = BASE % ('inet_protocols = ipv4; route "v6.test" { via = "[2001:db8::25]:25"; }',
                   d + "/pw")
    ar = smar.AddressResolver(conf.loads(text), resolver=FakeDNS())
    assert _hops(ar, ar.route("a@relay.test", "x@v6.test"), "v6.test") == []
    # the real resolver: a literal is returned only in an allowed family
    real = dnsresolve.Resolver([("127.0.0.1", 9)], backend="codec")
    got = compat.asyncio.run(real.resolve_addresses("2001:db8::25", (dnsresolve.FAMILY_INET,)))
    assert got == []
    got = compat.asyncio.run(real.resolve_addresses("192.0.2.25", (dnsresolve.FAMILY_INET,)))
    assert got == [(dnsresolve.FAMILY_INET, "192.0.2.25")]


class _Network:
    # a board's network module: lwIP's DNS server from DHCP
    @staticmethod
    def ipconfig(what):
        return "192.0.2.53" if what == "dns" else None


def test_a_board_without_resolv_conf_asks_its_dhcp_dns_server():
    # no resolv.conf on a board, and lwIP cannot reach 127.0.0.1 (no loopback): the
    # DNS server the network stack got from DHCP comes before that last resort
    import sys
    missing = fresh_dir("noresolv") + "/resolv.conf"
    saved = sys.modules.get("network")
    sys.modules["network"] = _Network
    try:
        assert dnsresolve.read_resolv_conf(missing) == [("192.0.2.53", 53)]
    finally:
        if saved is None:
            del sys.modules["network"]
        else:
            sys.modules["network"] = saved
    if saved is None:
        assert dnsresolve.read_resolv_conf(missing) == dnsresolve.DEFAULT_NAMESERVERS

# smar against a real DNS server (tests/dnszone.py) on loopback, with its config
# and aliases file, under CPython (dnspython) and the real micropython binary (the
# codec resolver): the same hops, errors and expansions on both.
import os
import subprocess
import sys

import pytest
from helpers.dnszone import DNSZone
from helpers.upy import ROOT, run_micropython

RUNTIMES = ("cpython", "micropython")
UPY_HEAP = "512K"
ZONE = {
    "example.test": [("MX", (20, "mx2.example.test")), ("MX", (10, "mx1.example.test"))],
    "mx1.example.test": [("A", "127.0.0.2")],
    "mx2.example.test": [("A", "127.0.0.3"), ("AAAA", "::1")],
    "nomx.test": [("A", "192.0.2.10")],
    "alias.test": [("CNAME", "example.test")],
    "null.test": [("MX", (0, "."))],
    "gw.test": [("MX", (5, "mx1.example.test"))],
    "smtp.isp.test": [("A", "192.0.2.9")],
}
ALIASES = "root: admin@example.test\npostmaster: root\nteam: root,\n  ops@nomx.test\n"

DRIVER = r"""
import sys
from meta1lite import compat, conf
from meta1lite.smar import dnsresolve
from meta1lite.smar import resolver as smar

async def run(argv):
    ar = smar.AddressResolver(conf.load(argv[1]))
    for rcpt in argv[2:]:
        try:
            print("X %s %s" % (rcpt, ",".join(ar.expand(rcpt))))
        except smar.UnknownAddress as exc:
            print("X %s unknown" % rcpt)
        route = ar.route("me@relay.test", rcpt)
        try:
            hops = await ar.next_hops(route, rcpt.rpartition("@")[2])
            print("H %s %s %s" % (rcpt, route.key, " ".join([h.relay() for h in hops])))
        except dnsresolve.DNSLookupError as exc:
            print("H %s %s %s" % (rcpt, route.key, type(exc).__name__))

compat.asyncio.run(run(sys.argv))
"""


@pytest.fixture(scope="module")
def zone():
    with DNSZone(ZONE, servfail={"broken.test"}) as z:
        yield z


def resolve(runtime, tmp_path, zone, rcpts):
    """{rcpt: (expansion, key, hops-or-error)} as the driver printed them."""
    (tmp_path / "aliases").write_text(ALIASES)
    (tmp_path / "m.conf").write_text("""hostname = "relay.test";
smtps { local_domains = { home.test }; }
smar { nameservers = { 127.0.0.1:%d }; dns_timeout = 3s; aliases = "%s";
       route "corp.test" { via = "gw.test:2525"; }
       route ".isp.test" { via = "[smtp.isp.test]:587"; } }
smtpc { port = 2500; }
""" % (zone.port, tmp_path / "aliases"))
    (tmp_path / "driver.py").write_text(DRIVER)
    args = [str(tmp_path / "driver.py"), str(tmp_path / "m.conf")] + rcpts
    if runtime == "micropython":
        proc = run_micropython(args, heap=UPY_HEAP)
    else:
        proc = subprocess.run([sys.executable] + args, capture_output=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = {}
    for line in proc.stdout.decode().splitlines():
        kind, rcpt, rest = line.split(" ", 2)
        out.setdefault(rcpt, {})[kind] = rest
    return out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_mx_hops_by_preference_with_every_address(runtime, tmp_path, zone):
    out = resolve(runtime, tmp_path, zone, ["u@example.test", "u@alias.test"])
    assert out["u@example.test"]["H"] == ("mx:example.test mx1.example.test[127.0.0.2]:2500 "
                                          "mx2.example.test[::1]:2500 "
                                          "mx2.example.test[127.0.0.3]:2500")
    assert out["u@alias.test"]["H"].split()[1] == "mx1.example.test[127.0.0.2]:2500"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_no_mx_falls_back_to_the_address_and_errors_are_classified(runtime, tmp_path, zone):
    out = resolve(runtime, tmp_path, zone, ["u@nomx.test", "u@null.test", "u@nx.test",
                                            "u@broken.test"])
    assert out["u@nomx.test"]["H"] == "mx:nomx.test nomx.test[192.0.2.10]:2500"
    assert out["u@null.test"]["H"] == "mx:null.test NullMX"
    assert out["u@nx.test"]["H"] == "mx:nx.test PermanentDNSError"
    assert out["u@broken.test"]["H"] == "mx:broken.test TemporaryDNSError"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_relay_routes(runtime, tmp_path, zone):
    out = resolve(runtime, tmp_path, zone, ["u@corp.test", "u@a.isp.test", "u@isp.test"])
    assert out["u@corp.test"]["H"] == "gw.test:2525 mx1.example.test[127.0.0.2]:2525"
    assert out["u@a.isp.test"]["H"] == "[smtp.isp.test]:587 smtp.isp.test[192.0.2.9]:587"
    assert out["u@isp.test"]["H"] == "mx:isp.test PermanentDNSError"   # ".isp.test": subdomains only


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_aliases_file(runtime, tmp_path, zone):
    out = resolve(runtime, tmp_path, zone, ["postmaster@relay.test", "team@home.test",
                                            "nobody@relay.test", "u@example.test"])
    assert out["postmaster@relay.test"]["X"] == "admin@example.test"
    assert out["team@home.test"]["X"] == "admin@example.test,ops@nomx.test"
    assert out["nobody@relay.test"]["X"] == "unknown"
    assert out["u@example.test"]["X"] == "u@example.test"

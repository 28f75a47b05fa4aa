# smtpc (with smar) against real peers on loopback: tests/nexthop.py (aiosmtpd,
# STARTTLS with a trustme certificate, AUTH) as the next hop and tests/dnszone.py
# as the DNS server. Each delivery runs DRIVER - building AddressResolver and
# SmtpClient from a config file, as the daemon does - under CPython and under the
# real micropython binary (DNS through the codec resolver there).
import os
import socket
import sys
import threading

import pytest
import trustme
from helpers.dnszone import DNSZone
from helpers.nexthop import NextHop, free_port
from helpers.upy import ROOT, run_micropython

RUNTIMES = ("cpython", "micropython")
UPY_HEAP = "1M"            # the driver imports conf, smar, smtpc and the cores from source
BODY = (b"From: Router Root <root@router.lan>\r\nTo: u@example.test\r\nSubject: test\r\n\r\n"
        b"line one\r\n.leading dot\r\n..two dots\r\n" + (b"x" * 70 + b"\r\n") * 60 + b".\r\nend\r\n")
ZONE = {
    "example.test": [("MX", (10, "mx1.example.test")), ("MX", (20, "mx2.example.test"))],
    "mx1.example.test": [("A", "127.0.0.2")],
    "mx2.example.test": [("A", "127.0.0.3")],
    "null.test": [("MX", (0, "."))],
    "smtp.isp.test": [("A", "127.0.0.1")],
}

DRIVER = r"""
import os, sys
from meta1lite import compat, conf, smtpc
from meta1lite.smar import dnsresolve
from meta1lite.smar import resolver as smar

if os.getenv("M1L_TEST_IMPLICIT_PORT"):
    smtpc.IMPLICIT_TLS_PORT = int(os.getenv("M1L_TEST_IMPLICIT_PORT"))

def chunks(path):
    try:
        with open(path, "rb") as f:
            while True:
                data = f.read(1000)
                if not data:
                    return
                yield data
                if os.getenv("M1L_TEST_BROKEN_BODY"):
                    raise OSError(5, "I/O error on the flash")
    finally:
        print("C body closed")      # the spool's reader closes its file and buffer here

async def run(argv):
    cfg = conf.load(argv[1])
    sender, path, njobs, rcpts = argv[2], argv[3], int(argv[4]), argv[5:]
    resolver, client = smar.AddressResolver(cfg), smtpc.SmtpClient(cfg)
    route = resolver.route(sender, rcpts[0])
    try:
        hops = await resolver.next_hops(route, rcpts[0].rpartition("@")[2])
    except dnsresolve.DNSLookupError as exc:
        print("E %s %s" % (type(exc).__name__, exc))
        return
    size = os.stat(path)[6]
    jobs = [smtpc.Job("Q%d" % n, sender, list(enumerate(rcpts)), size, False,
                      lambda: chunks(path)) for n in range(njobs)]
    results = await client.deliver(route, hops, jobs)
    for job in jobs:
        for r in results[job.queue_id]:
            print("R %s %d %s %d %s %s %s" % (job.queue_id, r.index, r.status, r.code,
                                            r.enhanced, r.relay, r.text))

compat.asyncio.run(run(sys.argv))
"""


class Outcome:
    """The driver's results: results[(queue_id, index)] = (status, code, enhanced, relay, text)."""

    def __init__(self, proc):
        self.out = proc.stdout.decode(errors="replace")
        self.log = proc.stderr.decode(errors="replace")
        self.results = {}
        self.error = None
        self.bodies_closed = self.out.count("C body closed")
        for line in self.out.splitlines():
            if line.startswith("R "):
                f = line.split(" ", 7)
                self.results[(f[1], int(f[2]))] = (f[3], int(f[4]), f[5], f[6], f[7])
            elif line.startswith("E "):
                self.error = line[2:]
        assert proc.returncode == 0 and (self.results or self.error), self.out + self.log

    def status(self, qid="Q0", index=0):
        return self.results[(qid, index)][0]

    def text(self, qid="Q0", index=0):
        return self.results[(qid, index)][4]


@pytest.fixture(scope="module")
def zone():
    with DNSZone(ZONE, servfail={"broken.test"}) as z:
        yield z


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("smtp.isp.test", "127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    other = trustme.CA()                         # a CA the client does not trust
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    (d / "password").write_text("s3cret-pw\n")
    (d / "wrong").write_text("not-the-password\n")
    return d


def _config(tmp_path, zone, port, routes="", ca=None, password=None):
    smtpc_extra = 'ca_file = "%s";' % ca if ca else ""
    if password:
        smtpc_extra += ' credentials "isp" { user = "me"; password_file = "%s"; }' % password
    return """hostname = "relay.test";
spool = "%s/spool";
smar { nameservers = { 127.0.0.1:%d }; dns_timeout = 3s; %s }
smtpc { port = %d; io_timeout = 30s; %s }
""" % (tmp_path, zone.port, routes, port, smtpc_extra)


def deliver(runtime, tmp_path, cfg_text, rcpts, sender="root@relay.test", jobs=1, body=BODY):
    """Run DRIVER on a runtime; returns its Outcome."""
    (tmp_path / "m.conf").write_text(cfg_text)
    (tmp_path / "body").write_bytes(body)
    (tmp_path / "driver.py").write_text(DRIVER)
    args = [str(tmp_path / "driver.py"), str(tmp_path / "m.conf"), sender,
            str(tmp_path / "body"), str(jobs)] + list(rcpts)
    if runtime == "micropython":
        proc = run_micropython(args, heap=UPY_HEAP, timeout=120)
    else:
        import subprocess
        env = dict(os.environ, PYTHONPATH=ROOT)
        proc = subprocess.run([sys.executable] + args, capture_output=True, timeout=120, env=env,
                              cwd=ROOT)
    return Outcome(proc)


def _smarthost_routes(port, tls="required", verify="yes", auth=True, extra=""):
    return 'route "*" { via = "[smtp.isp.test]:%d"; tls = %s; tls_verify = %s; %s %s }' % (
        port, tls, verify, 'auth = "isp";' if auth else "", extra)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_mx_first_host_down_second_receives(runtime, tmp_path, zone):
    port = free_port("127.0.0.3")
    with NextHop("127.0.0.3", port) as hop:
        out = deliver(runtime, tmp_path, _config(tmp_path, zone, port), ["u@example.test"])
    assert out.status() == "sent", out.log
    assert out.results[("Q0", 0)][3] == "mx2.example.test[127.0.0.3]:%d" % port
    assert "connect to mx1.example.test[127.0.0.2]:%d" % port in out.log
    [msg] = hop.messages
    assert msg.mail_from == "root@relay.test" and msg.rcpt_tos == ["u@example.test"]
    assert msg.content == BODY                   # dot-stuffing undone byte for byte


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("domain,error", [("null.test", "NullMX"),
                                          ("nx.test", "PermanentDNSError"),
                                          ("broken.test", "TemporaryDNSError")])
def test_dns_failures_are_classified(runtime, domain, error, tmp_path, zone):
    out = deliver(runtime, tmp_path, _config(tmp_path, zone, free_port()), ["u@" + domain])
    assert out.error.split()[0] == error


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_smarthost_starttls_auth_delivers(runtime, tmp_path, zone, pki):
    port = free_port()
    cfg = _config(tmp_path, zone, port, _smarthost_routes(port), ca=pki / "ca.pem",
                  password=pki / "password")
    with NextHop(port=port, cert=(str(pki / "cert.pem"), str(pki / "key.pem")),
                 require_starttls=True, users={"me": "s3cret-pw"}) as hop:
        out = deliver(runtime, tmp_path, cfg, ["a@far.test", "b@far.test"])
    assert [out.status("Q0", i) for i in (0, 1)] == ["sent", "sent"], out.log
    [msg] = hop.messages
    assert msg.tls and msg.login == "me" and msg.rcpt_tos == ["a@far.test", "b@far.test"]
    assert "Verified TLS connection established to smtp.isp.test[127.0.0.1]" in out.log
    assert "s3cret-pw" not in out.log + out.out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_smarthost_wrong_password_defers_with_the_servers_reply(runtime, tmp_path, zone, pki):
    port = free_port()
    cfg = _config(tmp_path, zone, port, _smarthost_routes(port), ca=pki / "ca.pem",
                  password=pki / "wrong")
    with NextHop(port=port, cert=(str(pki / "cert.pem"), str(pki / "key.pem")),
                 require_starttls=True, users={"me": "s3cret-pw"}) as hop:
        out = deliver(runtime, tmp_path, cfg, ["a@far.test"])
    assert out.status() == "deferred"
    assert "535 5.7.8 Authentication credentials invalid" in out.text()
    assert "SASL authentication failed; server smtp.isp.test[127.0.0.1] said: 535" in out.log
    assert hop.auth_attempts == [("me", False)] and hop.mail_commands == []
    assert "not-the-password" not in out.log + out.out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_tls_required_without_starttls_sends_nothing(runtime, tmp_path, zone, pki):
    port = free_port()
    cfg = _config(tmp_path, zone, port, _smarthost_routes(port, auth=False), ca=pki / "ca.pem")
    with NextHop(port=port) as hop:
        out = deliver(runtime, tmp_path, cfg, ["a@far.test"])
    assert out.status() == "deferred" and "TLS is required" in out.text()
    assert hop.mail_commands == [] and hop.messages == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_untrusted_certificate_with_tls_required_sends_nothing(runtime, tmp_path, zone, pki):
    port = free_port()
    cfg = _config(tmp_path, zone, port, _smarthost_routes(port, auth=False),
                  ca=pki / "other-ca.pem")
    with NextHop(port=port, cert=(str(pki / "cert.pem"), str(pki / "key.pem"))) as hop:
        out = deliver(runtime, tmp_path, cfg, ["a@far.test"])
    assert out.status() == "deferred" and "TLS" in out.text(), out.text()
    assert hop.mail_commands == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_opportunistic_tls_encrypts_without_verification(runtime, tmp_path, zone, pki):
    port = free_port()
    cfg = _config(tmp_path, zone, port, _smarthost_routes(port, tls="opportunistic", auth=False))
    with NextHop(port=port, cert=(str(pki / "cert.pem"), str(pki / "key.pem"))) as hop:
        out = deliver(runtime, tmp_path, cfg, ["a@far.test"])
    assert out.status() == "sent", out.log
    assert hop.messages[0].tls and "Anonymous TLS connection established" in out.log


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_per_recipient_results(runtime, tmp_path, zone):
    port = free_port()
    routes = 'route "*" { via = "[127.0.0.1]:%d"; }' % port
    replies = {"later@far.test": "451 4.2.1 mailbox busy", "gone@far.test": "550 5.1.1 no such user"}
    with NextHop(port=port, rcpt_replies=replies, pipelining=True) as hop:
        out = deliver(runtime, tmp_path, _config(tmp_path, zone, port, routes),
                      ["ok@far.test", "later@far.test", "gone@far.test"])
    got = [out.results[("Q0", i)][:3] for i in range(3)]
    assert got == [("sent", 250, "2.0.0"), ("deferred", 451, "4.2.1"), ("bounced", 550, "5.1.1")]
    assert "550 5.1.1 no such user" in out.text("Q0", 2)
    assert hop.messages[0].rcpt_tos == ["ok@far.test"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_three_messages_over_one_connection(runtime, tmp_path, zone):
    port = free_port()
    routes = 'route "*" { via = "[127.0.0.1]:%d"; }' % port
    with NextHop(port=port) as hop:
        out = deliver(runtime, tmp_path, _config(tmp_path, zone, port, routes), ["a@far.test"],
                      jobs=3)
    assert [out.status(q) for q in ("Q0", "Q1", "Q2")] == ["sent"] * 3
    assert hop.connections == 1 and len(hop.messages) == 3


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_451_at_the_dot_defers_and_the_next_attempt_delivers(runtime, tmp_path, zone):
    port = free_port()
    cfg = _config(tmp_path, zone, port, 'route "*" { via = "[127.0.0.1]:%d"; }' % port)
    with NextHop(port=port) as hop:
        hop.fail_next(1, "451 4.3.0 try again later")
        first = deliver(runtime, tmp_path, cfg, ["a@far.test"])
        second = deliver(runtime, tmp_path, cfg, ["a@far.test"])
    assert first.status() == "deferred" and "451 4.3.0 try again later" in first.text()
    assert second.status() == "sent" and len(hop.messages) == 1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_rewrite_sender_and_from_header(runtime, tmp_path, zone, pki):
    port = free_port()
    routes = _smarthost_routes(port, extra='rewrite_sender = "me@isp.test"; '
                                           'rewrite_from_header = yes;')
    cfg = _config(tmp_path, zone, port, routes, ca=pki / "ca.pem", password=pki / "password")
    with NextHop(port=port, cert=(str(pki / "cert.pem"), str(pki / "key.pem")),
                 users={"me": "s3cret-pw"}) as hop:
        out = deliver(runtime, tmp_path, cfg, ["a@far.test"])
    assert out.status() == "sent", out.log
    [msg] = hop.messages
    assert msg.mail_from == "me@isp.test"
    assert msg.content == BODY.replace(b"<root@router.lan>", b"<me@isp.test>")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_null_sender_is_never_rewritten(runtime, tmp_path, zone):
    port = free_port()
    routes = 'route "*" { via = "[127.0.0.1]:%d"; rewrite_sender = "me@isp.test"; ' \
             'rewrite_from_header = yes; }' % port
    with NextHop(port=port) as hop:
        out = deliver(runtime, tmp_path, _config(tmp_path, zone, port, routes), ["a@far.test"],
                      sender="")
    assert out.status() == "sent"
    assert hop.messages[0].mail_from == "<>" and hop.messages[0].content == BODY


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_all_hops_down_defers_with_the_last_error(runtime, tmp_path, zone):
    port = free_port("127.0.0.3")
    out = deliver(runtime, tmp_path, _config(tmp_path, zone, port), ["u@example.test"])
    assert out.status() == "deferred" and out.results[("Q0", 0)][3] == "none"
    assert "connect to mx2.example.test[127.0.0.3]" in out.text()



@pytest.mark.parametrize("runtime", RUNTIMES)
def test_implicit_tls_on_the_smtps_port(runtime, tmp_path, zone, pki, monkeypatch):
    port = free_port()
    monkeypatch.setenv("M1L_TEST_IMPLICIT_PORT", str(port))     # 465 itself needs root
    cfg = _config(tmp_path, zone, port, _smarthost_routes(port), ca=pki / "ca.pem",
                  password=pki / "password")
    with NextHop(port=port, cert=(str(pki / "cert.pem"), str(pki / "key.pem")),
                 implicit_tls=True, users={"me": "s3cret-pw"}) as hop:
        out = deliver(runtime, tmp_path, cfg, ["a@far.test"])
    assert out.status() == "sent", out.log
    assert hop.messages[0].tls and hop.messages[0].login == "me"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_unreadable_body_is_never_completed(runtime, tmp_path, zone, monkeypatch):
    port = free_port()
    monkeypatch.setenv("M1L_TEST_BROKEN_BODY", "1")     # the body fails after its first chunk
    routes = 'route "*" { via = "[127.0.0.1]:%d"; }' % port
    with NextHop(port=port) as hop:
        out = deliver(runtime, tmp_path, _config(tmp_path, zone, port, routes), ["a@far.test"])
    assert out.status() == "deferred" and "cannot read the queued message" in out.text()
    assert hop.messages == []


class _RawHop:
    """A next hop of one connection that greets, then either says 354 to DATA and
    closes the connection (hang_up_in_data) or reads and never answers."""

    def __init__(self, hang_up_in_data=True):
        self.answers = hang_up_in_data
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 hop.test ESMTP\r\n")
            for line in lines:          # until the client closes
                if not self.answers:
                    continue
                if line[:4].upper() == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    conn.recv(4096)
                    return          # closed in the middle of the body
                conn.sendall(b"250 ok\r\n")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_next_hop_gone_mid_body_defers_and_the_body_is_closed(runtime, tmp_path, zone):
    # MicroPython never closes a generator that is dropped unfinished: smtpc closes
    # the body it stopped reading (on a board, the spool's reader holds a 1K LittleFS
    # file handle and a pooled buffer until then)
    hop = _RawHop()
    routes = 'route "*" { via = "[127.0.0.1]:%d"; }' % hop.port
    out = deliver(runtime, tmp_path, _config(tmp_path, zone, hop.port, routes), ["a@far.test"],
                  body=BODY * 200)
    assert out.status() == "deferred", out.results
    assert out.bodies_closed == 1, out.out + out.log


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_next_hop_that_stops_answering_is_given_up_at_io_timeout(runtime, tmp_path, zone):
    port = _RawHop(hang_up_in_data=False).port
    cfg = _config(tmp_path, zone, port, _smarthost_routes(port, tls="off", auth=False))
    out = deliver(runtime, tmp_path, cfg.replace("io_timeout = 30s", "io_timeout = 2s"),
                  ["a@far.test"])
    assert out.status() == "deferred", out.log
    assert out.text() == "timeout after 2s reading from smtp.isp.test[127.0.0.1]:%d" % port, out.log

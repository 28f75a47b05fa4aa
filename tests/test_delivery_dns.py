# End to end through DNS and through a lenient next hop, on both runtimes: the daemon
# resolves MX records from a dnslib server (MicroPython: its own DNS codec), skips a
# dead MX host, bounces null MX and NXDOMAIN with one DSN each, defers on SERVFAIL;
# and SMTP smuggling never makes a second message even at a next hop that ends DATA
# on a bare LF.
import asyncio
import socket
import threading
import time

import pytest
from helpers.daemon import RUNTIMES, free_port
from helpers.dnszone import DNSZone
from helpers.nexthop import NextHop
from test_delivery import send, start_relay, wait_for

ZONE = {
    "example.test": [("MX", (10, "mx1.example.test")), ("MX", (20, "mx2.example.test"))],
    "mx1.example.test": [("A", "127.0.0.2")],       # nothing listens there
    "mx2.example.test": [("A", "127.0.0.3")],
    "null.test": [("MX", (0, "."))],
    "home.test": [("MX", (10, "mx2.example.test"))],  # where the DSNs go
}
SMUGGLED = b"MAIL FROM:<evil@relay.test>\r\n"


def dns_routes(zone):
    return 'nameservers = { 127.0.0.1:%d }; dns_timeout = 2s; route "*" { via = mx; }' % zone.port


def dsns(hop):
    return [m for m in hop.messages if m.mail_from in ("", "<>")]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_mx_delivery_null_mx_nxdomain_and_servfail(runtime, tmp_path):
    port = free_port("127.0.0.3")
    with DNSZone(ZONE, servfail={"broken.test"}) as zone, NextHop("127.0.0.3", port) as hop:
        daemon = start_relay(runtime, tmp_path, dns_routes(zone), smtpc="port = %d;" % port)
        try:
            send(daemon.port, "dev@home.test", ["u@example.test"], b"Subject: mx\r\n\r\nhi\r\n")
            wait_for(lambda: len(hop.messages) >= 1, "delivery via mx2", daemon)
            assert hop.messages[0].rcpt_tos == ["u@example.test"]
            assert "relay=mx2.example.test[127.0.0.3]:%d" % port in daemon.log()
            for rcpt in ("u@null.test", "u@nx.test", "u@broken.test"):
                send(daemon.port, "dev@home.test", [rcpt], b"Subject: %s\r\n\r\nhi\r\n" % rcpt.encode())
            wait_for(lambda: len(dsns(hop)) >= 2, "two DSNs", daemon)
            wait_for(lambda: "to=<u@broken.test>" in daemon.log(), "the SERVFAIL attempt", daemon)
            time.sleep(1.0)
            log = daemon.log()
            assert len(dsns(hop)) == 2 and all(m.rcpt_tos == ["dev@home.test"] for m in dsns(hop))
            assert "to=<u@null.test>" in log and "dsn=5.1.10, status=bounced" in log
            assert "to=<u@nx.test>" in log and "dsn=5.1.2, status=bounced" in log
            broken = [line for line in log.splitlines() if "to=<u@broken.test>" in line]
            assert broken and all("status=deferred" in line for line in broken)
        finally:
            daemon.stop()


class LenientHop:
    """A next hop that ends DATA at a bare-LF dot too (the lenient servers that make
    SMTP smuggling work) and counts the MAIL commands it sees."""

    def __init__(self):
        self.port = free_port()
        self.mails = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _session(self, reader, writer):
        writer.write(b"220 lenient ESMTP\r\n")
        in_data = False
        while True:
            line = await reader.readline()
            if not line:
                break
            if in_data:
                if line in (b".\r\n", b".\n"):
                    in_data = False
                    writer.write(b"250 2.0.0 ok\r\n")
                continue
            verb = line[:4].upper()
            if verb == b"MAIL":
                self.mails.append(line)
            in_data = verb == b"DATA"
            writer.write(b"354 go\r\n" if in_data else b"221 bye\r\n" if verb == b"QUIT"
                         else b"250 ok\r\n")
            if verb == b"QUIT":
                break
        writer.close()

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, "127.0.0.1", self.port), self.loop).result(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_smuggling_never_reaches_a_lenient_next_hop(runtime, tmp_path):
    with LenientHop() as hop:
        route = 'route "*" { via = "[127.0.0.1]:%d"; }' % hop.port
        daemon = start_relay(runtime, tmp_path, route, top="", smtpc="")
        daemon_conf = open(daemon.conf_path).read()
        assert "bare_lf" not in daemon_conf
        daemon.stop()
        with open(daemon.conf_path, "w") as f:                  # normalize: accepted, made safe
            f.write(daemon_conf.replace("smtps {", "smtps {\n    bare_lf = normalize;", 1))
        daemon.start()
        try:
            for ending in (b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n"):
                with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as s:
                    s.sendall(b"EHLO c\r\nMAIL FROM:<dev@home.test>\r\nRCPT TO:<u@dest.test>\r\n"
                              b"DATA\r\n")
                    time.sleep(0.3)
                    s.sendall(b"Subject: s\r\n\r\nhi" + ending + SMUGGLED +
                              b"RCPT TO:<victim@dest.test>\r\nDATA\r\nowned\r\n\r\n.\r\nQUIT\r\n")
                    reply = b""
                    while b"221" not in reply:
                        data = s.recv(4096)
                        if not data:
                            break
                        reply += data
                    assert reply.count(b"queued as") == 1, reply
            wait_for(lambda: len(hop.mails) >= 4, "four deliveries", daemon)
            time.sleep(1.0)
            assert len(hop.mails) == 4 and not any(b"evil" in m for m in hop.mails), hop.mails
        finally:
            daemon.stop()

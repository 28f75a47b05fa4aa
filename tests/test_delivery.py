# End-to-end delivery: smtplib -> meta1lite (CPython or the MicroPython unix port) ->
# an aiosmtpd next hop (tests/nexthop.py), over real loopback sockets. Owns the
# "Must show" cases of issue 4 for the queue manager: 500 messages exactly once and
# byte-identical, 451 then a retry, 550 -> one DSN from <>, no bounce for <>, and a
# next-hop outage of an hour of simulated time ending with `meta1lite queue flush`.
# Polls with deadlines; no timed assertions.
import os
import re
import smtplib
import subprocess
import sys
import threading
import time

import pytest
from helpers.daemon import ROUTER_HEAP, RUNTIMES, UPY_HEAP, Daemon, config_text, free_port
from helpers.nexthop import NextHop

BULK_HEAP = ROUTER_HEAP         # 500 messages arrive faster than they leave: the index grows
HOUR_SCALE = "3600"             # META1LITE_CLOCK_SCALE: one real second = one simulated hour
DEADLINE_S = 60


SMTPS_LIMITS = "max_connections = 50; max_connections_per_client = 50; " \
               "max_messages_per_client_per_minute = 100000;"


def relay_conf(tmp_path, port, routes, qmgr="", smtpc="", top="", per_destination=4):
    """A daemon config: routes is the smar body (e.g. route "*" {...})."""
    control = 'control = "127.0.0.1:%d";' % free_port(besides=(port,))
    extra = """%s
%s
smar { %s }
smtpc { io_timeout = 2d; max_per_destination = %d; %s }
qmgr { %s }
""" % (control, top, routes, per_destination, smtpc, qmgr)
    text = config_text(str(tmp_path / "spool"), port, top_extra=extra, smtps_extra=SMTPS_LIMITS)
    if "postmaster =" in top:
        text = text.replace('postmaster = "postmaster@relay.test";', "", 1)
    return text


def via(port, host="127.0.0.1"):
    return 'route "*" { via = "[%s]:%d"; }' % (host, port)


def start_relay(runtime, tmp_path, routes, scale=None, heap=None, **kw):
    port = free_port()
    env = {"META1LITE_CLOCK_SCALE": scale} if scale else {}
    return Daemon(runtime, tmp_path, relay_conf(tmp_path, port, routes, **kw), port, env=env,
                  heap=heap or UPY_HEAP).start()


def wait_for(cond, what, daemon=None, deadline=DEADLINE_S):
    end = time.time() + deadline
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s\n%s" % (what, daemon.log()[-6000:] if daemon else ""))


def message(n, sender="dev@home.test", rcpt="user@dest.test", size=2048):
    head = ("From: <%s>\r\nTo: <%s>\r\nSubject: test %d\r\nDate: Tue, 24 Nov 2026 14:08:00 +0000\r\n"
            "Message-ID: <%d.test@home.test>\r\n\r\n" % (sender, rcpt, n, n)).encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.\r\n"
    body = (line * (size // len(line) + 1))[:max(0, size - len(head) - 2)]
    return head + body.rstrip(b"\r\n") + b"\r\n"


def send(port, sender, rcpts, data):
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.sendmail(sender, rcpts, data)


def strip_received(content):
    """The content without its first Received: field (with continuation lines)."""
    assert content.startswith(b"Received: "), content[:200]
    lines = content.split(b"\r\n")
    k = 1
    while lines[k][:1] in (b" ", b"\t"):
        k += 1
    return b"\r\n".join(lines[k:])


def cli(daemon, *args):
    cmd = [sys.executable, "-m", "meta1lite", "-c", daemon.conf_path] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=daemon.workdir)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_500_messages_exactly_once(runtime, tmp_path):
    count, senders = 500, (10 if runtime == "cpython" else 4)     # a board: a few sessions
    with NextHop() as hop:
        # the queue builds up while 500 arrive: the spool's index costs ~1 KB a message
        # on MicroPython (measured), so this one runs with a router-sized heap
        daemon = start_relay(runtime, tmp_path, via(hop.port), heap=BULK_HEAP)
        try:
            sent = {}

            def worker(w):
                with smtplib.SMTP("127.0.0.1", daemon.port, timeout=120) as s:
                    for n in range(w, count, senders):
                        data = message(n, rcpt="user%d@dest.test" % n)
                        s.sendmail("dev@home.test", ["user%d@dest.test" % n], data)
                        sent[n] = data
            threads = [threading.Thread(target=worker, args=(w,)) for w in range(senders)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(sent) == count
            wait_for(lambda: len(hop.messages) >= count, "%d deliveries" % count, daemon, 240)
            time.sleep(0.5)
            assert len(hop.messages) == count
            seen = {}
            for m in hop.messages:
                n = int(re.search(rb"Subject: test (\d+)", m.content).group(1))
                assert n not in seen, "delivered twice: %d" % n
                seen[n] = m
                assert m.mail_from == "dev@home.test" and m.rcpt_tos == ["user%d@dest.test" % n]
                assert strip_received(m.content) == sent[n]
            log = daemon.log()
            assert log.count("status=sent") == count
            assert log.count(": removed") >= count
            assert re.search(r"meta1lite/smtp\[\d+\]: \w+: to=<user\d+@dest.test>, relay=127\.0\.0\.1"
                             r"\[127\.0\.0\.1\]:\d+, delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, "
                             r"dsn=2\.0\.0, status=sent \(250 ", log)
        finally:
            daemon.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_451_defers_and_a_retry_delivers(runtime, tmp_path):
    with NextHop() as hop:
        hop.fail_next(1, "451 4.3.0 try again later")
        daemon = start_relay(runtime, tmp_path, via(hop.port), scale=HOUR_SCALE,
                             qmgr="retry_min = 1h; retry_max = 2h;")
        try:
            send(daemon.port, "dev@home.test", ["user@dest.test"], message(1))
            wait_for(lambda: "status=deferred" in daemon.log(), "a deferral", daemon)
            assert "dsn=4.3.0" in daemon.log() and "451 4.3.0 try again later" in daemon.log()
            wait_for(lambda: len(hop.messages) == 1, "the retry", daemon)
            time.sleep(0.5)
            assert len(hop.messages) == 1 and "status=sent" in daemon.log()
        finally:
            daemon.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_550_makes_exactly_one_dsn(runtime, tmp_path):
    with NextHop(rcpt_replies={"gone@dest.test": "550 5.1.1 no such user",
                               "gone2@dest.test": "550 5.1.1 no such user"}) as hop:
        daemon = start_relay(runtime, tmp_path, via(hop.port))
        try:
            send(daemon.port, "dev@home.test", ["gone@dest.test", "gone2@dest.test", "ok@dest.test"],
                 message(7))
            wait_for(lambda: len(hop.messages) >= 2, "delivery and the DSN", daemon)
            time.sleep(1.0)
            dsns = [m for m in hop.messages if m.mail_from in ("", "<>")]
            assert len(dsns) == 1, hop.messages
            assert dsns[0].rcpt_tos == ["dev@home.test"]
            body = dsns[0].content
            assert b"report-type=delivery-status" in body
            assert body.count(b"Final-Recipient: rfc822;") == 2
            assert b"Status: 5.1.1" in body and b"Subject: test 7" in body
            log = daemon.log()
            assert log.count("status=bounced") == 2
            assert re.search(r"meta1lite/bounce\[\d+\]: \w+: sender non-delivery notification: \w+", log)
            assert len(hop.messages) == 2
        finally:
            daemon.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_null_sender_failure_makes_no_bounce(runtime, tmp_path):
    with NextHop(rcpt_replies={"gone@dest.test": "550 5.1.1 no such user"}) as hop:
        daemon = start_relay(runtime, tmp_path, via(hop.port), top='postmaster = "";')
        try:
            send(daemon.port, "", ["gone@dest.test"], message(8, sender="MAILER-DAEMON@home.test"))
            wait_for(lambda: "undeliverable notification discarded" in daemon.log(), "the drop", daemon)
            time.sleep(1.0)
            assert hop.messages == [] and "non-delivery notification:" not in daemon.log()
        finally:
            daemon.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_outage_holds_queue_and_flush_delivers(runtime, tmp_path):
    down_port = free_port()
    with NextHop() as other:
        routes = 'route "other.test" { via = "[127.0.0.1]:%d"; } %s' % (other.port, via(down_port))
        daemon = start_relay(runtime, tmp_path, routes, scale=HOUR_SCALE,
                             qmgr="retry_min = 1h; retry_max = 4h;")
        try:
            for n in range(5):
                send(daemon.port, "dev@home.test", ["user%d@dest.test" % n], message(n))
            wait_for(lambda: daemon.log().count("status=deferred") >= 5, "deferrals", daemon)
            time.sleep(1.5)         # more than an hour of simulated time with the hop down
            send(daemon.port, "dev@home.test", ["x@other.test"], message(99))   # still responsive
            wait_for(lambda: len(other.messages) == 1, "the other route", daemon)
            listed = cli(daemon, "queue", "list", "--json")
            assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 5, listed
            with NextHop(port=down_port) as hop:
                result = cli(daemon, "queue", "flush")
                assert result.returncode == 0, result.stderr
                wait_for(lambda: len(hop.messages) == 5, "delivery after flush", daemon, 10)
            wait_for(lambda: cli(daemon, "queue", "list").stdout.startswith("Mail queue is empty"),
                     "an empty queue", daemon, 10)
        finally:
            daemon.stop()
    assert os.path.exists(daemon.log_path)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_body_8bitmime_is_passed_on_or_bounced(runtime, tmp_path):
    # issue 11 item 6: BODY=8BITMIME was dropped on relay and an 8-bit body went
    # unchanged to a next hop without 8BITMIME; RFC 6152 says pass it on, or return it
    eight = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode("utf-8")
    with NextHop() as hop8, NextHop(eightbitmime=False) as hop7:
        routes = 'route "eight.test" { via = "[127.0.0.1]:%d"; } %s' % (hop8.port, via(hop7.port))
        daemon = start_relay(runtime, tmp_path, routes)
        try:
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as s:
                s.sendmail("dev@home.test", ["u@eight.test"], eight, mail_options=["BODY=8BITMIME"])
                s.sendmail("dev@home.test", ["u@seven.test"], eight, mail_options=["BODY=8BITMIME"])
                s.sendmail("dev@home.test", ["plain@seven.test"], message(3))
            wait_for(lambda: len(hop8.messages) >= 1 and len(hop7.messages) >= 2,
                     "the 8-bit delivery, the 7-bit one and the DSN", daemon)
        finally:
            daemon.stop()
    assert len(hop8.mail_options) == 1 and "BODY=8BITMIME" in hop8.mail_options[0]
    assert hop8.messages[0].content.endswith("d\u00e9j\u00e0 vu\r\n".encode("utf-8"))
    got = dict((m.rcpt_tos[0], m) for m in hop7.messages)
    assert sorted(got) == ["dev@home.test", "plain@seven.test"], hop7.messages
    assert got["dev@home.test"].mail_from in ("", "<>") and b"5.6.3" in got["dev@home.test"].content
    assert "to=<u@seven.test>" in daemon.log() and "status=bounced" in daemon.log()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_message_is_recorded_when_its_own_transaction_ends(runtime, tmp_path):
    # issue 11: results were recorded after a whole connection's batch, so a crash
    # late in a batch sent every earlier message of it again. Two queued messages go
    # out on one connection; while the second's final dot waits at the next hop, the
    # first is already out of the queue.
    down_port = free_port()
    daemon = start_relay(runtime, tmp_path, via(down_port), qmgr="retry_min = 1h; retry_max = 4h;",
                         per_destination=1)
    try:
        send(daemon.port, "dev@home.test", ["fast@dest.test"], message(1))
        send(daemon.port, "dev@home.test", ["slow@dest.test"], message(2))
        wait_for(lambda: daemon.log().count("status=deferred") >= 2, "deferrals", daemon)
        with NextHop(port=down_port, slow_after=(1, 4)) as hop:
            assert cli(daemon, "queue", "flush").returncode == 0
            wait_for(lambda: len(hop.messages) == 1, "the first delivery", daemon)
            first = hop.messages[0].rcpt_tos[0]
            second = ({"fast@dest.test", "slow@dest.test"} - {first}).pop()
            wait_for(lambda: first not in cli(daemon, "queue", "list").stdout,
                     "the first recorded while the second is in flight", daemon, 3)
            assert second in cli(daemon, "queue", "list").stdout and len(hop.messages) == 1
            wait_for(lambda: len(hop.messages) == 2, "the second delivery", daemon)
            assert hop.connections == 1
    finally:
        daemon.stop()

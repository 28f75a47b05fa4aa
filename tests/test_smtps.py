# smtps over real sockets, against the daemon on CPython and under the MicroPython
# unix port: relay control (issue 3's open-relay list), SMTP smuggling, and what
# smtps adds to a message (Received:, Date:, Message-ID:) and logs. Clients are raw
# sockets (tests/smtpclient.py) bound to 127.0.0.1 (in relay_from) or 127.0.0.2
# (outside it); results are read through the spool API after the daemon stopped.
import re

import pytest
from helpers.daemon import RUNTIMES
from helpers.smtpclient import Client, assert_clean_log, queued, start_smtps

D, SRV, IP = "example.org", "relay.test", "127.0.0.1"
OUTSIDER = "127.0.0.2"
SENDERS = ("", "f@%s" % D, "f@%s" % SRV, "f@[%s]" % IP)
RELAY_TRICKS = (
    "t@{D}", "t%{D}@[{IP}]", "t%{D}@{SRV}", '"t@{D}"', '"t%{D}"', "t@{D}@[{IP}]",
    '"t@{D}"@[{IP}]', "t@{D}@{SRV}", "@[{IP}]:t@{D}", "@{SRV}:t@{D}", "{D}!t", "{D}!t@[{IP}]",
    "{D}!t@{SRV}",
)
# every reply to a trick is a refusal; syntax errors must not end the session here
NO_CLOSE = "max_bad_commands = 1000;"


def tricks():
    return [t.format(D=D, SRV=SRV, IP=IP) for t in RELAY_TRICKS]


# an alias the outsider may legitimately reach, and its name on foreign literals
KNOWN_LOCAL = "root"
LITERAL_TRICKS = ("root@[192.0.2.1]", "root@[IPv6:2001:db8::1]", "root@[%s]" % IP)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_open_relay_list_is_refused(runtime, tmp_path):
    (tmp_path / "aliases").write_text("%s: admin@%s\n" % (KNOWN_LOCAL, D))
    daemon = start_smtps(runtime, tmp_path, NO_CLOSE,
                         smar='aliases = "%s";' % (tmp_path / "aliases"))
    try:
        with Client(daemon.port, source=OUTSIDER) as c:
            c.greeting_and_ehlo()
            for sender in SENDERS:
                r = c.cmd("MAIL FROM:<%s>" % sender)
                assert r.code == 250, (sender, r)
                for rcpt in tricks() + list(LITERAL_TRICKS):
                    r = c.cmd("RCPT TO:<%s>" % rcpt)
                    assert r.code >= 500, "relayed %s -> %s: %r" % (sender, rcpt, r)
                r = c.cmd("DATA")
                assert r.code >= 500, r
                assert c.cmd("RSET").code == 250
            # what an outsider may do: mail a local address the aliases know
            assert c.cmd("MAIL FROM:<f@%s>" % D).code == 250
            assert c.cmd("RCPT TO:<nobody@%s>" % SRV).code == 550
            r = c.cmd("RCPT TO:<%s@%s>" % (KNOWN_LOCAL, SRV))
            assert r.code == 250, r
            assert c.cmd("RSET").code == 250
            assert c.cmd("QUIT").code == 221
        with Client(daemon.port, source=IP) as c:       # in relay_from: may relay
            c.greeting_and_ehlo()
            r = c.message("f@%s" % SRV, ["t@%s" % D], b"Subject: relayed\r\n\r\nhello\r\n")
            assert r.code == 250, r
    finally:
        daemon.stop()
    log = assert_clean_log(daemon)
    assert re.search(r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.2\]: 554 5\.7\.1 ", log)
    found = queued(tmp_path)
    assert [(s, r) for s, r, _ in found.values()] == [("f@%s" % SRV, ["t@%s" % D])]


def smuggle(ending):
    """A message whose data hides a second transaction behind a bare-LF/CR 'end'."""
    return (b"Subject: smuggling\r\n\r\nfirst part" + ending +
            b"MAIL FROM:<x@relay.test>\r\nRCPT TO:<y@example.org>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\n")


ENDINGS = (b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n")


def send_smuggler(c, ending):
    """One transaction carrying the smuggling payload; the reply to its dot, and
    checks that the session answers the next command (NOOP) and nothing else."""
    r = c.cmd("MAIL FROM:<f@relay.test>")
    assert r.code == 250, r
    assert c.cmd("RCPT TO:<t@example.org>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(smuggle(ending))
    final = c.reply()
    noop = c.cmd("NOOP")
    assert noop.code == 250 and "OK" in noop.text, "smuggled commands answered: %r" % noop
    return final


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_smuggling_rejected(runtime, tmp_path):
    daemon = start_smtps(runtime, tmp_path)
    try:
        with Client(daemon.port) as c:
            c.greeting_and_ehlo()
            for ending in ENDINGS:
                r = send_smuggler(c, ending)
                assert (r.code, r.text[:5]) == (550, "5.5.2"), (ending, r)
            r = c.message("f@relay.test", ["t@example.org"], b"Subject: clean\r\n\r\nclean\r\n")
            assert r.code == 250, r
    finally:
        daemon.stop()
    assert_clean_log(daemon)
    bodies = [b for _, _, b in queued(tmp_path).values()]
    assert len(bodies) == 1 and b"Subject: clean" in bodies[0]


def only_crlf(data):
    """True when every CR is followed by LF and every LF preceded by CR."""
    return data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_smuggling_normalized(runtime, tmp_path):
    daemon = start_smtps(runtime, tmp_path, "bare_lf = normalize;")
    try:
        with Client(daemon.port) as c:
            c.greeting_and_ehlo()
            for ending in ENDINGS:
                r = send_smuggler(c, ending)
                assert r.code == 250, (ending, r)
    finally:
        daemon.stop()
    assert_clean_log(daemon)
    found = queued(tmp_path)
    assert len(found) == len(ENDINGS)        # one message per payload, never a second
    for sender, rcpts, body in found.values():
        assert (sender, rcpts) == ("f@relay.test", ["t@example.org"])
        assert b"MAIL FROM:<x@relay.test>\r\nRCPT TO:<y@example.org>\r\n" in body
        assert b"smuggled body\r\n" in body
        assert only_crlf(body), body


HEADERS_PRESENT = (b"Date: Tue, 24 Nov 2026 14:08:00 +0000\r\nMessage-ID: <given@home.test>\r\n"
                   b"Subject: has both\r\n\r\nbody\r\n")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_received_date_message_id_and_log_lines(runtime, tmp_path):
    daemon = start_smtps(runtime, tmp_path)
    try:
        ids = []
        with Client(daemon.port) as c:
            c.greeting_and_ehlo("dev.home.test")
            for data in (b"Subject: bare\r\n\r\nbody\r\n", HEADERS_PRESENT):
                r = c.message("f@relay.test", ["t@example.org"], data)
                assert r.code == 250, r
                ids.append(re.search(r"queued as (\w+)", r.text).group(1))
    finally:
        daemon.stop()
    log = assert_clean_log(daemon)
    found = queued(tmp_path)
    assert sorted(found) == sorted(ids)
    bare, given = found[ids[0]][2], found[ids[1]][2]
    for qid, body in ((ids[0], bare), (ids[1], given)):
        head = body.split(b"\r\n\r\n", 1)[0]
        assert body.startswith(b"Received: from dev.home.test (unknown [127.0.0.1])"), body[:200]
        assert ("by relay.test (meta1lite) with ESMTP id %s" % qid).encode() in head
        assert ("%s: client=unknown[127.0.0.1]" % qid) in log
    bare_head = bare.split(b"\r\n\r\n", 1)[0]
    assert re.search(rb"\r\nDate: \w{3}, \d+ \w{3} \d{4} ", bare_head), bare_head
    assert re.search(rb"\r\nMessage-ID: <[^>]*%s[^>]*>" % ids[0].encode(), bare_head), bare_head
    assert given.count(b"Date:") == 1 and given.count(b"Message-ID:") == 1
    assert given.endswith(HEADERS_PRESENT)
    assert "connect from unknown[127.0.0.1]" in log
    assert re.search(r"disconnect from unknown\[127\.0\.0\.1\] ehlo=1 mail=2 rcpt=2 data=2", log)

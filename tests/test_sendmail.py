# `meta1lite sendmail` / `meta1lite-sendmail` (here on CPython; the same command
# under micropython: test_cli_runtimes.py): options, the message it queues, exit
# codes, and the daemon (both runtimes) taking the message whether it was down
# (sendmail commits to the journal) or running (over the control channel).
import io
import os
import re
import subprocess
import sys

import pytest
from helpers.daemon import RUNTIMES, config_text, free_port
from test_durability import HEAP, LocalDaemon, load_spool

from meta1lite import conf
from meta1lite.cli import sendmail

BIN = os.path.dirname(sys.executable)
CONTROL = "control = 127.0.0.1:%d;\n"        # the MicroPython daemon has no unix socket
QMGR = 'qmgr { retry_min = 1h; %s }\nsmar { route "*" { via = "[127.0.0.1]:1"; } }'
MESSAGE = b"Subject: hello\nTo: <to@example.org>\n\nline one\n.\nafter the dot\n"


def write_config(tmp_path, port=None, qmgr_extra=""):
    port = port or free_port()
    text = config_text(str(tmp_path / "spool"), port,
                       top_extra=CONTROL % free_port() + QMGR % qmgr_extra)
    path = tmp_path / "meta1lite.conf"
    path.write_text(text)
    return str(path), port


def run_cli(args, data, tool="meta1lite", cwd=None):
    return subprocess.run([os.path.join(BIN, tool)] + args, input=data, capture_output=True,
                          timeout=60, cwd=cwd)


def inject(tmp_path, argv, data, qmgr_extra=""):
    """sendmail.main in this process; returns (exit status, the config)."""
    path, _port = write_config(tmp_path, qmgr_extra=qmgr_extra)
    cfg = conf.load(path)
    return sendmail.main(cfg, argv, stdin=io.BytesIO(data)), cfg


def queued(tmp_path):
    """[(Message, body bytes)] in the spool."""
    spool = load_spool(str(tmp_path / "spool"))
    try:
        return [(m, b"".join(spool.read_body(m.id))) for m in spool.messages()]
    finally:
        spool.close()


def header_names(body):
    head = body.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]


def test_arguments_and_the_lone_dot(tmp_path):
    status, _cfg = inject(tmp_path, ["-f", "me@home.test", "-F", "Me Myself", "a@example.org",
                                     "b"], MESSAGE)
    assert status == 0
    [(msg, body)] = queued(tmp_path)
    assert msg.sender == "me@home.test"
    assert [r.addr for r in msg.recipients] == ["a@example.org", "b@relay.test"]
    assert body.endswith(b"\r\n\r\nline one\r\n")           # a lone dot ends it without -i
    assert b"From: Me Myself <me@home.test>\r\n" in body
    names = header_names(body)
    assert names[0] == b"received" and b"date" in names and b"message-id" in names
    received = body.split(b"\r\n")[0]
    assert b" id " not in received and b"local" not in received    # no made-up queue ID


@pytest.mark.parametrize("flag", ["-i", "-oi"])
def test_dash_i_keeps_a_lone_dot(tmp_path, flag):
    status, _cfg = inject(tmp_path, [flag, "--", "-odd@example.org"], MESSAGE)
    assert status == 0
    [(msg, body)] = queued(tmp_path)
    assert [r.addr for r in msg.recipients] == ["-odd@example.org"]
    assert body.endswith(b"line one\r\n.\r\nafter the dot\r\n")


def test_dash_t_reads_to_cc_bcc_and_removes_bcc(tmp_path):
    data = (b"From: Sender <s@home.test>\nTo: A <a@example.org>, b@example.org\n"
            b"Cc: c@example.net\nBcc: hidden@example.com,\n secret@example.com\n"
            b"Subject: t\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <x@home.test>\n\nbody\n")
    status, _cfg = inject(tmp_path, ["-t", "-r", "<s@home.test>"], data)
    assert status == 0
    [(msg, body)] = queued(tmp_path)
    assert msg.sender == "s@home.test"
    assert sorted(r.addr for r in msg.recipients) == [
        "a@example.org", "b@example.org", "c@example.net", "hidden@example.com", "secret@example.com"]
    assert b"hidden" not in body and b"secret" not in body and b"Bcc" not in body
    assert body.count(b"From:") == 1 and body.count(b"Message-ID:") == 1 and body.count(b"Date:") == 1
    assert body.endswith(b"\r\n\r\nbody\r\n")


def test_null_sender_and_unique_message_ids(tmp_path):
    assert inject(tmp_path, ["-f", "<>", "a@example.org"], b"Subject: one\n\nx\n")[0] == 0
    assert inject(tmp_path, ["-f", "<>", "a@example.org"], b"Subject: two\n\nx\n")[0] == 0
    found = queued(tmp_path)
    assert [m.sender for m, _b in found] == ["", ""]
    ids = [[line for line in body.split(b"\r\n") if line.startswith(b"Message-ID:")][0] for _m, body in found]
    assert ids[0] != ids[1]


@pytest.mark.parametrize("argv", [[], ["-t"], ["-X"], ["-f"], ["-bp"], ["bad address@x"],
                                  ["-f", "a b@c", "a@example.org"]])
def test_usage_errors_exit_64(tmp_path, argv, capsys):
    data = b"Subject: no recipients here\n\nx\n"
    assert inject(tmp_path, argv, data)[0] == 64
    assert "sendmail:" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "spool" / "incoming") or not os.listdir(tmp_path / "spool" / "incoming")


def test_a_line_over_1000_octets_exits_65(tmp_path):
    assert inject(tmp_path, ["a@example.org"], b"Subject: long\n\n" + b"y" * 999 + b"\n")[0] == 65
    assert inject(tmp_path, ["a@example.org"], b"Subject: ok\n\n" + b"y" * 998 + b"\n")[0] == 0
    assert len(queued(tmp_path)) == 1


def test_a_bare_cr_exits_65(tmp_path):
    assert inject(tmp_path, ["a@example.org"], b"Subject: cr\n\nfoo\r.\r\nbar\n")[0] == 65


def test_a_full_queue_exits_75(tmp_path, capsys):
    assert inject(tmp_path, ["a@example.org"], MESSAGE, "max_messages = 1;")[0] == 0
    assert inject(tmp_path, ["a@example.org"], MESSAGE, "max_messages = 1;")[0] == 75
    assert "too many messages" in capsys.readouterr().err
    assert len(queued(tmp_path)) == 1


def test_meta1lite_sendmail_takes_dash_capital_c(tmp_path):
    path, _port = write_config(tmp_path)
    proc = run_cli(["-C", path, "-i", "a@example.org"], MESSAGE, tool="meta1lite-sendmail", cwd="/")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(["-c", path, "sendmail", "-v", "b@example.org"], MESSAGE, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert b"queued as" in proc.stderr
    assert sorted(m.recipients[0].addr for m, _b in queued(tmp_path)) == ["a@example.org", "b@example.org"]
    proc = run_cli(["-C", str(tmp_path / "missing.conf"), "a@example.org"], MESSAGE, tool="meta1lite-sendmail")
    assert proc.returncode == 78


def assert_adoption_logged(log, queue_id, rcpt):
    """Adopting a sendmail message logs Postfix's pickup line (pflogsumm: received) and
    the from=, size=, nrcpt= line, once each."""
    sender = "from=<[^>]*>"
    assert len(re.findall(r"meta1lite/pickup\[\d+\]: %s: uid=%d %s\n" % (queue_id, os.getuid(), sender),
                          log)) == 1, log
    assert len(re.findall(r"meta1lite/qmgr\[\d+\]: %s: %s, size=\d+, nrcpt=1 \(queue active\)"
                          % (queue_id, sender), log)) == 1, log


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_queued_while_the_daemon_is_down(runtime, tmp_path):
    path, port = write_config(tmp_path)
    proc = run_cli(["-c", path, "sendmail", "-v", "down@example.org"], MESSAGE)
    assert proc.returncode == 0, proc.stderr
    queue_id = proc.stderr.decode().split("queued as ")[1].split()[0]
    assert [m.id for m, _b in queued(tmp_path)] == [queue_id]
    daemon = LocalDaemon(runtime, tmp_path, open(path).read(), port, heap=HEAP)
    with daemon:
        pass
    assert "recovered 1 messages" in daemon.log()
    assert queue_id in daemon.log()         # the qmgr's delivery attempt names it
    assert_adoption_logged(daemon.log(), queue_id, "down@example.org")
    [(msg, _body)] = queued(tmp_path)
    assert msg.id == queue_id and msg.recipients[0].addr == "down@example.org"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_handed_to_the_running_daemon(runtime, tmp_path):
    """With the daemon up, sendmail hands the message over the control channel: the
    daemon commits it through its journal and logs it as picked up at once."""
    path, port = write_config(tmp_path)
    daemon = LocalDaemon(runtime, tmp_path, open(path).read(), port, heap=HEAP)
    with daemon:
        proc = run_cli(["-c", path, "sendmail", "-v", "running@example.org"], MESSAGE)
        assert proc.returncode == 0, proc.stderr
        queue_id = proc.stderr.decode().split("queued as ")[1].split()[0]
        assert queue_id in daemon.log()
        assert not os.listdir(tmp_path / "spool" / "incoming")
    assert_adoption_logged(daemon.log(), queue_id, "running@example.org")
    [(msg, body)] = queued(tmp_path)
    assert msg.id == queue_id and body.endswith(b"line one\r\n")

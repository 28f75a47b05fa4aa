# The command line under the MicroPython unix port (issue 10): sendmail, mailq,
# queue list|show|hold|release|delete|flush [--json], check, status, reload run
# as `micropython -m meta1lite ...` from the .mpy bundle with the same arguments,
# output and exit codes as on CPython; sendmail's exit 0 is durable (a kill -9
# right after it loses nothing). CPython-only driver; the tools and the daemon run
# on the runtime under test.
import json
import os
import re
import socket
import subprocess
import sys

import pytest
from helpers.daemon import RUNTIMES, UPY_HEAP, Daemon, bundle, free_port
from helpers.nexthop import NextHop
from helpers.upy import find_micropython, micropython_env, run_micropython
from test_delivery import relay_conf, via, wait_for

CLI_HEAP = "512K"               # the wrappers' heap for the tools (boards/openwrt)
MESSAGE = b"To: Ops <ops@dest.test>\nSubject: cron\n\nbackup done\n"
QUEUED_RE = re.compile(r"queued as ([0-9A-Z]{12})")


def tool(runtime, conf, args, data=None, env=None):
    """`meta1lite -c conf ARGS` on the runtime; CompletedProcess (bytes)."""
    if runtime == "cpython":
        cmd, run_env = [sys.executable, "-m", "meta1lite"], dict(os.environ)
    else:
        exe = find_micropython()
        if exe is None:
            run_micropython(["-c", "pass"])     # fails in CI, skips elsewhere
        cmd, run_env = [exe, "-X", "heapsize=" + CLI_HEAP, "-m", "meta1lite"], micropython_env(bundle())
    run_env.update(env or {})
    return subprocess.run(cmd + ["-c", conf] + list(args), input=data, capture_output=True,
                          timeout=120, env=run_env)


def both(conf, args, data=None):
    """The same command on both runtimes: (CPython's result, MicroPython's)."""
    return tool("cpython", conf, args, data), tool("micropython", conf, args, data)


def same(conf, args, data=None):
    """Run on both runtimes, assert identical exit status, stdout and stderr."""
    cp, mp = both(conf, args, data)
    assert (mp.returncode, mp.stdout, mp.stderr) == (cp.returncode, cp.stdout, cp.stderr), (cp, mp)
    return cp


def write_conf(tmp_path, hop_port=None):
    """tmp_path/meta1lite.conf (a next hop on hop_port, down unless started); its
    path and the SMTP port."""
    conf, port = tmp_path / "meta1lite.conf", free_port()
    conf.write_text(relay_conf(tmp_path, port, via(hop_port or free_port()),
                               qmgr="retry_min = 1h; retry_max = 4h;"))
    return str(conf), port


def start_daemon(runtime, tmp_path, conf, port):
    return Daemon(runtime, tmp_path, open(conf).read(), port, heap=UPY_HEAP)


def queue_ids(runtime, conf):
    out = tool(runtime, conf, ["queue", "list", "--json"])
    assert out.returncode == 0, out.stderr
    return [json.loads(line)["queue_id"] for line in out.stdout.decode().splitlines()]


def sendmail(runtime, conf, args, data=MESSAGE):
    proc = tool(runtime, conf, ["sendmail", "-v"] + list(args), data)
    assert proc.returncode == 0, proc.stderr
    return QUEUED_RE.search(proc.stderr.decode()).group(1)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sendmail_with_the_daemon_down_then_the_tools(runtime, tmp_path):
    conf, _port = write_conf(tmp_path)
    first = sendmail(runtime, conf, ["-t", "-f", "cron@router.lan"])
    second = sendmail(runtime, conf, ["-F", "Jürgen", "b@dest.test"])
    assert sorted(queue_ids(runtime, conf)) == sorted([first, second])
    same(conf, ["mailq"])
    same(conf, ["queue", "list", "--json"])
    listing = same(conf, ["queue", "show", first]).stdout.decode()
    assert "recipient: ops@dest.test status: queued" in listing and "backup done" in listing
    same(conf, ["queue", "show", "--json", second])
    same(conf, ["status"])
    same(conf, ["status", "--json"])
    assert same(conf, ["queue", "flush"]).returncode == 1          # the mail system is down
    assert same(conf, ["queue", "show", "NOSUCHID0000"]).returncode == 1
    assert tool(runtime, conf, ["queue", "hold", first]).returncode == 0
    assert b"*** ENVELOPE" in tool(runtime, conf, ["queue", "show", first]).stdout
    listed = [json.loads(line) for line in same(conf, ["queue", "list", "--json"]).stdout.splitlines()]
    assert [m["queue_name"] for m in listed if m["queue_id"] == first] == ["hold"]
    assert tool(runtime, conf, ["queue", "delete", first]).returncode == 0
    assert queue_ids(runtime, conf) == [second]


@pytest.mark.parametrize("args,data,status", [
    ([], MESSAGE, 64), (["-X"], MESSAGE, 64), (["-f"], MESSAGE, 64), (["-bp"], MESSAGE, 64),
    (["bad address@x"], MESSAGE, 64), (["a@dest.test"], b"Subject: x\n\n" + b"y" * 999 + b"\n", 65),
    (["a@dest.test"], b"Subject: cr\n\nfoo\r.\r\nbar\n", 65)])
def test_sendmail_errors_are_the_same(tmp_path, args, data, status):
    conf, _port = write_conf(tmp_path)
    assert same(conf, ["sendmail"] + args, data).returncode == status
    assert queue_ids("cpython", conf) == []


def test_a_full_queue_exits_75_on_both(tmp_path):
    conf = tmp_path / "full.conf"
    conf.write_text(open(write_conf(tmp_path)[0]).read().replace("qmgr {", "qmgr { max_messages = 1;"))
    sendmail("micropython", str(conf), ["a@dest.test"])
    cp, mp = both(str(conf), ["sendmail", "b@dest.test"], MESSAGE)
    assert cp.returncode == mp.returncode == 75 and b"too many messages" in mp.stderr


def test_check_is_the_same(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text('hostname = "r";\nsmtps {\n    max_conections = 5;\n    max_message_size = 10X;\n}\n')
    out = same(str(bad), ["check"])
    assert out.returncode == 1
    assert b"bad.conf:3:5: error: unknown option 'max_conections'" in out.stderr
    assert same(write_conf(tmp_path)[0], ["check"]).returncode == 0
    assert same(str(tmp_path / "missing.conf"), ["check"]).returncode == 2


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_tools_against_the_running_daemon(runtime, tmp_path):
    hop_port = free_port()
    conf, port = write_conf(tmp_path, hop_port)
    daemon = start_daemon(runtime, tmp_path, conf, port)
    with daemon:
        queue_id = sendmail(runtime, conf, ["-t"])
        assert "%s: uid=" % queue_id in daemon.log()              # handed over, not adopted
        wait_for(lambda: "status=deferred" in daemon.log(), "the first attempt", daemon)
        status = tool(runtime, conf, ["status", "--json"])
        assert status.returncode == 0 and json.loads(status.stdout)["messages"] == 1
        assert tool(runtime, conf, ["queue", "hold", queue_id]).returncode == 0
        assert tool(runtime, conf, ["queue", "release", queue_id]).returncode == 0
        assert tool(runtime, conf, ["reload"]).returncode == 0
        wait_for(lambda: "configuration reloaded" in daemon.log(), "the reload", daemon)
        with NextHop(port=hop_port) as hop:
            flush = tool(runtime, conf, ["queue", "flush"])
            assert flush.returncode == 0 and b"flush:" in flush.stdout, flush.stderr
            wait_for(lambda: hop.messages, "the delivery", daemon)
        assert hop.messages[0].rcpt_tos == ["ops@dest.test"]
        wait_for(lambda: queue_ids(runtime, conf) == [], "the queue to empty", daemon)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("daemon_up", [False, True], ids=["daemon-down", "daemon-up"])
def test_sendmail_exit_0_survives_kill_9(runtime, daemon_up, tmp_path):
    """Exit 0, then at once kill -9 of the daemon (or of a daemon started right
    after): the next daemon delivers the message."""
    hop_port = free_port()
    conf, port = write_conf(tmp_path, hop_port)
    daemon = start_daemon(runtime, tmp_path, conf, port)
    if daemon_up:
        daemon.start()
    queue_id = sendmail(runtime, conf, ["-t"])
    if not daemon_up:
        daemon.start()
    daemon.kill()
    with NextHop(port=hop_port) as hop:
        with daemon:
            assert tool(runtime, conf, ["queue", "flush"]).returncode == 0   # tried (deferred) before
            wait_for(lambda: hop.messages, "the delivery after kill -9", daemon)
    assert hop.messages[0].rcpt_tos == ["ops@dest.test"] and b"backup done" in hop.messages[0].content
    assert queue_id in daemon.log()


def control_request(port, data):
    """Raw bytes to the control channel; the reply lines (dicts)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            more = s.recv(4096)
            if not more:
                break
            got += more
    return [json.loads(line) for line in got.decode().splitlines()]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_bad_inject_is_refused_and_nothing_is_queued(runtime, tmp_path):
    conf, port = write_conf(tmp_path)
    control = int(re.search(r"control = \"127.0.0.1:(\d+)\"", open(conf).read()).group(1))
    with start_daemon(runtime, tmp_path, conf, port) as daemon:
        envelopes = (b'{"from": "a@b", "rcpt": ["bad address@x"]}', b'{"from": "a@b"}', b"not json")
        for env in envelopes:
            [reply] = control_request(control, b"inject %d 4\n%sbody" % (len(env), env))
            assert not reply["ok"] and reply["error"].startswith("bad envelope"), reply
        [reply] = control_request(control, b"inject 999999999 4\n")
        assert reply == {"ok": False, "error": "bad inject sizes"}
        env = b'{"from": "", "rcpt": ["x@dest.test"], "uid": 7}'
        [reply] = control_request(control, b"inject %d 100\n%scut short" % (len(env), env))
        assert daemon.proc.poll() is None
    assert queue_ids(runtime, conf) == []


def test_micropython_tools_reach_a_unix_socket_control_channel(tmp_path):
    """A CPython daemon on its default control socket (SPOOL/control): the unix
    port's tools connect with a raw sockaddr_un."""
    conf, port = write_conf(tmp_path)
    text = re.sub(r'control = "127.0.0.1:\d+";', "", open(conf).read())
    with open(conf, "w") as f:
        f.write(text)
    with start_daemon("cpython", tmp_path, conf, port) as daemon:
        status = tool("micropython", conf, ["status", "--json"])
        assert status.returncode == 0 and json.loads(status.stdout)["running"] is True
        queue_id = sendmail("micropython", conf, ["-t"])
        assert "%s: uid=" % queue_id in daemon.log()


def test_unix_port_sendmail_syncs_a_new_queue_once(tmp_path):
    # the unix port cannot fsync a directory: a daemon-down sendmail that creates the
    # queue's first segments runs `sync` after making each (the journal does), before
    # exit 0, and only then (a spool with segments made ahead of need is appended to,
    # durable without a directory sync)
    conf, _port = write_conf(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "synced"
    fake = bin_dir / "sync"
    fake.write_text("#!/bin/sh\necho x >> %s\n" % marker)
    fake.chmod(0o755)
    env = {"PATH": "%s:%s" % (bin_dir, os.environ["PATH"])}
    first = tool("micropython", conf, ["sendmail", "-t"], MESSAGE, env)
    assert first.returncode == 0, first.stderr
    made = marker.read_text().count("x")
    assert made >= 1
    second = tool("micropython", conf, ["sendmail", "-t"], MESSAGE, env)
    assert second.returncode == 0, second.stderr
    assert marker.read_text().count("x") == made
    assert len(queue_ids("micropython", conf)) == 2

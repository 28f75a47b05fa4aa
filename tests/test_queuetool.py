# The queue tools (`meta1lite queue list|show|flush|hold|release|delete [--json]`,
# `meta1lite mailq`, `meta1lite status`) on a spool with and without the daemon
# running (the daemon on both runtimes; the tools are CPython-only).
import json
import subprocess
import sys

import pytest
from helpers.daemon import RUNTIMES, free_port
from test_delivery import message, relay_conf, send, start_relay, via, wait_for


def run_cli(conf_path, *args):
    cmd = [sys.executable, "-m", "meta1lite", "-c", conf_path] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def offline(tmp_path, n=2):
    """A config whose next hop is down, and n messages injected with sendmail."""
    conf = tmp_path / "meta1lite.conf"
    conf.write_text(relay_conf(tmp_path, free_port(), via(free_port()),
                               qmgr="retry_min = 1h; retry_max = 4h;"))
    for k in range(n):
        proc = subprocess.run([sys.executable, "-m", "meta1lite", "-c", str(conf), "sendmail",
                               "-f", "dev@home.test", "user%d@dest.test" % k],
                              input=message(k).replace(b"\r\n", b"\n"), capture_output=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
    return str(conf)


def ids(conf):
    out = run_cli(conf, "queue", "list", "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_tools_without_daemon(tmp_path):
    conf = offline(tmp_path)
    listed = ids(conf)
    assert len(listed) == 2
    first = listed[0]
    assert set(first) >= {"queue_name", "queue_id", "arrival_time", "message_size", "sender",
                          "recipients"}
    assert first["queue_name"] == "active" and first["sender"] == "dev@home.test"
    assert first["recipients"][0]["address"] in ("user0@dest.test", "user1@dest.test")
    qid = first["queue_id"]
    people = run_cli(conf, "mailq")
    assert people.returncode == 0 and "-Queue ID-" in people.stdout and qid in people.stdout
    assert "in 2 Requests." in people.stdout
    shown = run_cli(conf, "queue", "show", qid)
    assert shown.returncode == 0 and "Subject: test" in shown.stdout and "sender: dev@home.test" in shown.stdout
    assert run_cli(conf, "queue", "show", "NOSUCHID").returncode == 1
    assert run_cli(conf, "queue", "hold", qid).returncode == 0
    assert [m["queue_name"] for m in ids(conf) if m["queue_id"] == qid] == ["hold"]
    assert qid + "!" in run_cli(conf, "queue", "list").stdout
    assert run_cli(conf, "queue", "release", qid).returncode == 0
    assert [m["queue_name"] for m in ids(conf) if m["queue_id"] == qid] == ["active"]
    assert run_cli(conf, "queue", "delete", qid).returncode == 0
    assert [m["queue_id"] for m in ids(conf)] == [listed[1]["queue_id"]]
    assert run_cli(conf, "queue", "delete", qid).returncode == 1
    flush = run_cli(conf, "queue", "flush")
    assert flush.returncode == 1 and "down" in flush.stderr
    status = run_cli(conf, "status", "--json")
    assert status.returncode == 1 and json.loads(status.stdout)["running"] is False
    assert run_cli(conf, "queue", "bogus").returncode == 2


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_tools_with_daemon(runtime, tmp_path):
    daemon = start_relay(runtime, tmp_path, via(free_port()), scale="3600",
                         qmgr="retry_min = 1h; retry_max = 4h;")
    try:
        conf = daemon.conf_path
        for k in range(3):
            send(daemon.port, "dev@home.test", ["user%d@dest.test" % k], message(k))
        wait_for(lambda: daemon.log().count("status=deferred") >= 3, "deferrals", daemon)
        listed = ids(conf)
        assert len(listed) == 3 and all(m["queue_name"] == "deferred" for m in listed)
        assert all("delay_reason" in m["recipients"][0] and m["recipients"][0]["delay_reason"]
                   for m in listed)
        a, b = listed[0]["queue_id"], listed[1]["queue_id"]
        shown = run_cli(conf, "queue", "show", a, "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["queue_id"] == a
        held = run_cli(conf, "queue", "hold", a)
        assert held.returncode == 0, held.stderr
        wait_for(lambda: "%s: placed on hold" % a in daemon.log(), "hold through the daemon", daemon)
        assert [m["queue_name"] for m in ids(conf) if m["queue_id"] == a] == ["hold"]
        assert run_cli(conf, "queue", "delete", b).returncode == 0
        wait_for(lambda: b not in [m["queue_id"] for m in ids(conf)], "the delete", daemon)
        assert run_cli(conf, "queue", "release", a).returncode == 0
        assert run_cli(conf, "queue", "release", "NOSUCHID").returncode == 1
        flush = run_cli(conf, "queue", "flush", "--json")
        assert flush.returncode == 0 and json.loads(flush.stdout)["ok"] is True
        status = run_cli(conf, "status", "--json")
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert st["running"] is True and st["messages"] == 2
        human = run_cli(conf, "status")
        assert human.returncode == 0 and "running" in human.stdout
        if runtime == "micropython":        # the GC heap's figures (issue 8)
            assert st["heap"] > 0 and st["heap_free"] > 0
            assert st["heap_high_water"] >= st["heap"]
            assert st["heap_high_water"] <= st["heap"] + st["heap_free"]
            assert "heap free: " in human.stdout and "high-water: " in human.stdout
        else:
            assert st["heap_free"] is None and st["heap_high_water"] is None
    finally:
        daemon.stop()

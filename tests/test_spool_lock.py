# The spool lock (issue 11, item 1), on both runtimes: a second daemon on the same
# spool exits non-zero with "spool DIR is in use by pid N" before touching anything
# while the first keeps accepting and delivering; after kill -9 of the first a new
# daemon takes the stale lock and nothing acknowledged is lost; the queue tools
# never write a spool another process holds. CPython-only driver.
import os
import re
import subprocess
import sys

import pytest
from helpers.daemon import RUNTIMES, Daemon, free_port
from helpers.nexthop import NextHop
from test_delivery import cli, message, relay_conf, send, start_relay, via, wait_for

from meta1lite.spool import lock as spool_lock

SECOND_TIMEOUT_S = 60
FIRST, QUEUED = 5, 8            # messages delivered at once / queued before the kill -9


def _subjects(hop):
    return [int(re.search(rb"Subject: test (\d+)", m.content).group(1)) for m in hop.messages]


def _second_daemon(runtime, tmp_path, hop_port):
    """A second daemon on the same spool (own port and control endpoint): its run."""
    workdir = tmp_path / "second"
    workdir.mkdir()
    port = free_port()
    second = Daemon(runtime, workdir, relay_conf(tmp_path, port, via(hop_port)), port)
    cmd, env = second.command()
    return subprocess.run(cmd, cwd=str(workdir), env=env, capture_output=True, text=True,
                          timeout=SECOND_TIMEOUT_S)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_second_daemon_refused_and_stale_lock_taken(runtime, tmp_path):
    spool = str(tmp_path / "spool")
    with NextHop() as hop:
        first = start_relay(runtime, tmp_path, via(hop.port))
        try:
            run = _second_daemon(runtime, tmp_path, hop.port)
            assert run.returncode != 0, run.stderr
            assert "meta1lite: spool %s is in use by pid %d" % (spool, first.proc.pid) in run.stderr
            assert first.proc.poll() is None
            for n in range(FIRST):
                send(first.port, "dev@home.test", ["u%d@dest.test" % n], message(n))
            wait_for(lambda: len(hop.messages) >= FIRST, "first deliveries", first)
            hop.fail_next(1000)             # from here on the messages stay queued
            for n in range(FIRST, FIRST + QUEUED):
                send(first.port, "dev@home.test", ["u%d@dest.test" % n], message(n))
            wait_for(lambda: first.log().count("status=deferred") >= QUEUED, "deferrals", first)
            first.kill()                    # lock.d/pid stays behind: a stale lock
            assert os.path.isdir(os.path.join(spool, spool_lock.LOCK_DIR))
        finally:
            first.stop()
        hop.fail_next(0)
        (tmp_path / "third").mkdir()
        port = free_port()
        again = Daemon(runtime, tmp_path / "third", relay_conf(tmp_path, port, via(hop.port)), port)
        again.start()
        try:
            assert cli(again, "queue", "flush").returncode == 0
            wait_for(lambda: len(set(_subjects(hop))) >= FIRST + QUEUED, "all delivered", again)
        finally:
            again.stop()
    assert sorted(set(_subjects(hop))) == list(range(FIRST + QUEUED))
    assert not os.path.exists(os.path.join(spool, spool_lock.LOCK_DIR))     # released at stop


def _tool(spool_conf, *args):
    cmd = [sys.executable, "-m", "meta1lite", "-c", spool_conf] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_queue_tool_does_not_write_a_locked_spool(tmp_path):
    spool = str(tmp_path / "spool")
    conf = tmp_path / "meta1lite.conf"
    conf.write_text(relay_conf(tmp_path, free_port(), via(1)))
    os.makedirs(spool)
    holder = subprocess.Popen([sys.executable, "-c", "import time;"
                               " from meta1lite.spool.lock import lock_spool; lock_spool(%r);"
                               " print('locked', flush=True); time.sleep(60)" % spool],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        run = _tool(str(conf), "queue", "hold", "4BQX0A1B2C3D")
        assert run.returncode == 1
        assert "spool %s is in use by pid %d" % (spool, holder.pid) in run.stderr
        assert not os.path.exists(os.path.join(spool, "seg"))      # nothing written
    finally:
        holder.kill()
        holder.wait()
    run = _tool(str(conf), "queue", "hold", "4BQX0A1B2C3D")       # the holder is gone
    assert run.returncode == 1 and "no such message" in run.stderr

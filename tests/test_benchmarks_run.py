# Smoke test of the benchmark scripts (benchmarks/*.py): each runs with tiny parameters
# and prints its table of figures. Never a timed assertion: the figures are not checked,
# only that they are printed (and that the messages arrived). CPython-only driver side;
# the built-in client and sink are used so that Postfix need not be installed.
import os
import re
import subprocess
import sys

import pytest
from helpers.upy import ROOT, find_micropython

BENCH = os.path.join(ROOT, "benchmarks")


def run(script, *args, timeout=300):
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script)] + list(args),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_accept_prints_figures():
    out = run("accept.py", "-m", "20", "-s", "4", "--fsync-msgs", "10", "--upy-msgs", "10",
              "--upy-sessions", "2", "--builtin-client")
    assert "parameters: msgs=20 sessions=4" in out
    assert re.search(r"^\s+cpython\s+-\s+4\s+20\s+[\d.]+\s+\d+\s+queued 20/20", out, re.M), out
    assert "fsyncs per message" in out or "skipped" in out
    if find_micropython():
        assert re.search(r"^\s+micropython\s+\S+\s+2\s+10\s+[\d.]+\s+\d+\s+queued 10/10", out, re.M), out


@pytest.mark.skipif(find_micropython() is None, reason="micropython binary not installed")
def test_heap_prints_figures():
    out = run("heap.py", "--big", "64K", "--sessions", "2", "--no-bisect", "--no-imports")
    assert "heap during SMTP" in out
    assert re.search(r"one session, one 2 KB message\s+[\d.]+K", out), out
    assert re.search(r"one 64K message\s+[\d.]+K.*ok", out), out


def test_relay_prints_figures():
    out = run("relay.py", "-m", "20", "-s", "4", "--warmup", "0", "--upy-msgs", "5", "--upy-sessions", "2",
              "--big-msgs", "4", "--big-size", "20000", "--lat-msgs", "3", "--upy-lat-msgs", "2",
              "--no-postfix", "--builtin-client", "--builtin-sink", "--daemons", "2")
    assert "end-to-end relay throughput" in out
    assert re.search(r"meta1lite \(cpython, 2 daemons\)\s+2048\s+20\s+4\s+.*delivered 20/20, "
                     r"cpu [\d.]+ ms/msg \(system [\d.]+\), machine [\d.]+ ms/msg", out), out
    assert re.search(r"no relay\)\s+2048\s+20\s+4\s+[\d.]+\s+\d+", out), out
    assert re.search(r"meta1lite \(cpython\)\s+2048\s+20\s+4\s+.*delivered 20/20", out), out
    assert re.search(r"meta1lite \(cpython\)\s+20000\s+4\s+4\s+.*delivered 4/4", out), out
    assert re.search(r"meta1lite \(cpython\)\s+3/3\s+[\d.]+\s+[\d.]+", out), out
    if find_micropython():
        assert re.search(r"meta1lite \(micropython.*\s+2048\s+5\s+2\s+.*delivered 5/5", out), out
        assert re.search(r"meta1lite \(micropython, heap \S+\)\s+2/2\s+[\d.]+\s+[\d.]+", out), out


def test_board_prints_figures():
    from helpers.board import firmware
    firmware()                      # skips with its reason (fails in CI) without a compiler
    out = run("board.py", "--messages", "6", "--no-bisect", "--heap", "384K")
    assert re.search(r"import cost \(sim firmware.*: \d+ modules, .* after: [\d.]+K \(\d+ bytes\)", out), out
    assert re.search(r"^\(a\) plain: (passes|FAILS) at 384\.0K", out, re.M), out
    assert re.search(r"^\(b\) tls: (passes|FAILS) at 384\.0K", out, re.M), out
    assert re.search(r"^\s+384\.0K\s+\d+/6\s+\d+\s+[\d.]+\s", out, re.M), out   # and msg/s

# Heap cost of the spool's in-memory index under the MicroPython unix port, from the
# .mpy bundle: 1,000 committed messages (1-2 recipients, a few deferred with long
# replies) are written on CPython into a spool, then recovered under micropython.
# Prints bytes of heap per queued message (steady state, after gc.collect()) and
# checks that recover() of the 1,000 messages, and listing them all, succeeds in a
# 256K heap.
# CPython-only (the driver side); figures are printed, not asserted, except that
# the small-heap recovery works and the index is complete.
import asyncio
import os
import subprocess
import sys

import pytest
from helpers.upy import ROOT, find_micropython

from meta1lite import compat
from meta1lite.spool import Spool

BUILD = os.path.join(ROOT, "firmware", "build_bundle.py")
COUNT = 1000
LONG_REPLY = "451 4.7.1 <rcpt@example.org>: greylisted, please try again later; " * 6

DRIVER = r"""
import gc, sys
from meta1lite import compat
compat.configure_logging("mem", "error")
from meta1lite.spool import Spool
path, mode = sys.argv[1], sys.argv[2]
gc.collect()
before = gc.mem_alloc()
sp = Spool(path, 1 << 40, 100000, 0)
n = sp.recover()
gc.collect()
after = gc.mem_alloc()
print("COUNT %d" % n)
print("HEAP %d %d" % (after - before, (after - before) // max(1, n)))
if mode == "check":
    seen = 0
    deferred = 0
    for msg in sp.messages():
        seen += 1
        for r in msg.recipients:
            if r.status == "deferred" and r.reply and len(r.reply) == 300:
                deferred += 1
    m = sp.get(msg.id)
    body = 0
    for chunk in sp.read_body(m.id):
        body += len(chunk)
    print("CHECK %d %d %d" % (seen, deferred, body == m.size))
    import os
    fds = len(os.listdir("/proc/self/fd"))
    cut = sp.read_body(m.id)        # read in part, then closed: its segment file too
    next(cut)
    cut.close()
    print("FDS %d" % (len(os.listdir("/proc/self/fd")) - fds))
sp.close()
"""


async def _fill(sp):
    ids = []

    async def one(i):
        w = sp.new_message()
        w.write(b"Subject: memory test %d\r\n\r\n" % i + b"x" * (300 + i % 700))
        rcpts = ["rcpt%d@example.org" % i]
        if i % 2:
            rcpts.append("other%d@example.net" % i)
        ids.append(await sp.commit(w, "sender%d@example.com" % i, rcpts, {"client": "[192.0.2.1]"}))
    for start in range(0, COUNT, 50):
        await asyncio.gather(*[one(i) for i in range(start, start + 50)])
    for qid in ids[:20]:
        await sp.record_attempt(qid, [(0, "deferred", LONG_REPLY, 1900000000)])
    return ids


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    if find_micropython() is None:
        pytest.skip("micropython binary missing")
    base = tmp_path_factory.mktemp("spoolmem")
    bundle = str(base / "bundle")
    proc = subprocess.run([sys.executable, BUILD, "--out", bundle], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = str(base / "spool")
    compat.configure_logging("test", "error")
    sp = Spool(path, 1 << 40, 100000, 0)
    sp.recover()
    asyncio.run(_fill(sp))
    sp.close()
    script = base / "driver.py"
    script.write_text(DRIVER)
    return bundle, path, str(script)


def _run(loaded, heap, mode):
    bundle, path, script = loaded
    env = dict(os.environ)
    env["MICROPYPATH"] = bundle + ":.frozen"
    proc = subprocess.run([find_micropython(), "-X", "heapsize=" + heap, script, path, mode],
                          env=env, capture_output=True, text=True, timeout=600, cwd="/")
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("COUNT", "HEAP", "CHECK", "FDS"):
            out[parts[0]] = [int(p) for p in parts[1:]]
    return proc, out


def test_index_heap_per_message(loaded):
    proc, out = _run(loaded, "4M", "check")
    assert proc.returncode == 0 and "HEAP" in out, proc.stdout + proc.stderr
    total, per = out["HEAP"]
    print("\nspool index on MicroPython: %d messages, %d bytes of heap, %d bytes per message"
          % (out["COUNT"][0], total, per))
    assert out["COUNT"] == [COUNT]
    assert out["CHECK"] == [COUNT, 20, 1], out
    assert out["FDS"] == [0], "a body read in part and closed left its file open"


def test_recover_thousand_in_256k_heap(loaded):
    """recover(), then every Message built by messages(), get() and a body read, all
    within a 256K heap (the spool modules from the bundle count in it)."""
    proc, out = _run(loaded, "256K", "check")
    print("\nrecover() + messages() of %d messages in a 256K heap: rc=%d %s" % (
        COUNT, proc.returncode, (proc.stdout + proc.stderr)[-300:]))
    assert proc.returncode == 0 and out.get("COUNT") == [COUNT], proc.stdout + proc.stderr
    assert out.get("CHECK") == [COUNT, 20, 1], proc.stdout + proc.stderr

# CPython-only tests of meta1lite.spool: the order of durability primitives (counting
# shims on durable.fsync_file / durable.sync_dir), group-commit fsync sharing, crash
# simulation with SIGKILLed subprocesses, and hypothesis-driven damage to spool files.
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers.spools import commit, open_spool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meta1lite import compat, durable
from meta1lite.spool import CorruptMessage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _quiet_log(monkeypatch):
    monkeypatch.setattr(compat.log, "threshold", compat.LEVELS["error"])


class Recorder:
    """Counting shims around compat's durability primitives; records the order."""

    def __init__(self, monkeypatch):
        self.events = []
        real_fsync, real_sync_dir = durable.fsync_file, durable.sync_dir

        def fsync_file(f):
            real_fsync(f)
            self.events.append(("fsync", os.path.realpath(f.name), os.fstat(f.fileno()).st_size))

        def sync_dir(path):
            self.events.append(("sync_dir", os.path.realpath(path), 0))
            return real_sync_dir(path)
        monkeypatch.setattr(durable, "fsync_file", fsync_file)
        monkeypatch.setattr(durable, "sync_dir", sync_dir)

    def count(self, kind):
        return sum(1 for e in self.events if e[0] == kind)

    def covered(self, path, offset, upto):
        """True if an fsync of path covering offset happened among events[:upto]."""
        path = os.path.realpath(path)
        return any(e[0] == "fsync" and e[1] == path and e[2] >= offset for e in self.events[:upto])


def _seg_path(sp, key):
    return sp.journal.segs[key].path


def test_commit_acknowledges_only_after_covering_fsync(tmp_path, monkeypatch):
    sp = open_spool(tmp_path, segment_size=16384, chunk_size=2048)
    rec = Recorder(monkeypatch)
    acks = []

    async def one(i):
        qid = await commit(sp, bytes([i]) * (3000 + 1500 * i))
        acks.append((qid, len(rec.events)))     # the moment commit returned ("250")

    async def main():
        await asyncio.gather(*[one(i) for i in range(12)])
    asyncio.run(main())
    assert len(acks) == 12
    for qid, upto in acks:
        msg = sp.get(qid)
        assert rec.covered(_seg_path(sp, msg.env_seg), msg.env_end, upto), qid
        for key in msg.segs:
            # chunks before the envelope's segment: that segment was rolled away (its
            # end final) before the envelope was appended, and must be synced to its end
            seg = sp.journal.segs[key]
            end = msg.env_end if key == msg.env_seg else seg.end
            assert rec.covered(seg.path, end, upto), (qid, key)
    assert any(len(sp.get(q).segs) > 1 for q, _ in acks)
    sp.close()


def test_new_segment_directory_synced_before_use(tmp_path, monkeypatch):
    rec = Recorder(monkeypatch)
    sp = open_spool(tmp_path, segment_size=8192, chunk_size=1024)
    asyncio.run(commit(sp, b"x" * 30000))
    seg_dir = os.path.realpath(str(tmp_path / "seg"))
    # every segment file was fsynced and its directory synced when it was created
    for key in sp.journal.segs:
        path = os.path.realpath(_seg_path(sp, key))
        first_fsync = next(i for i, e in enumerate(rec.events) if e[0] == "fsync" and e[1] == path)
        assert any(e == ("sync_dir", seg_dir, 0) for e in rec.events[first_fsync:]), path
    sp.close()


def test_group_commit_shares_fsyncs(tmp_path, monkeypatch):
    sp = open_spool(tmp_path)
    rec = Recorder(monkeypatch)
    asyncio.run(commit(sp, b"a" * 2048))
    one = (rec.count("fsync"), rec.count("sync_dir"))
    rec.events.clear()

    async def twenty():
        return await asyncio.gather(*[commit(sp, bytes([65 + i]) * 2048) for i in range(20)])
    ids = asyncio.run(twenty())
    many = (rec.count("fsync"), rec.count("sync_dir"))
    print("\nfsync/sync_dir calls: 1 message: %d/%d; 20 concurrent messages: %d/%d" % (one + many))
    assert one == (1, 0)
    assert 1 <= many[0] <= 3 and len(set(ids)) == 20
    sp.close()


def test_record_attempt_is_group_synced(tmp_path, monkeypatch):
    sp = open_spool(tmp_path)
    ids = [asyncio.run(commit(sp, b"m" * 100)) for _ in range(10)]
    rec = Recorder(monkeypatch)

    async def deliver():
        await asyncio.gather(*[sp.record_attempt(q, [(0, "deferred", "451 4.4.1 later", 99)]) for q in ids])
    asyncio.run(deliver())
    assert rec.count("fsync") == 1
    sp.close()
    sp = open_spool(tmp_path)
    assert all(sp.get(q).recipients[0].status == "deferred" for q in ids)
    sp.close()


def test_enospc_mid_data_is_spoolfull_and_leaves_nothing(tmp_path, monkeypatch):
    sp = open_spool(tmp_path, chunk_size=512)
    ok = asyncio.run(commit(sp, b"k" * 700))
    import errno

    from meta1lite import spool as spool_mod
    from meta1lite.spool import journal as journal_mod
    real = journal_mod.write_all
    calls = [0]

    def failing(f, data):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, data)
    monkeypatch.setattr(journal_mod, "write_all", failing)
    w = sp.new_message()
    w.write(b"z" * 5000)
    assert w.error is not None
    try:
        asyncio.run(sp.commit(w, "a@b", ["c@d"]))
        raise AssertionError("commit succeeded")
    except spool_mod.SpoolFull as exc:
        assert "space" in exc.reason
    monkeypatch.setattr(journal_mod, "write_all", real)
    ok2 = asyncio.run(commit(sp, b"q" * 3000))
    sp.close()
    sp = open_spool(tmp_path, chunk_size=512)
    assert sorted(m.id for m in sp.messages()) == sorted([ok, ok2])
    assert b"".join(sp.read_body(ok2)) == b"q" * 3000
    sp.close()


CHILD = r"""
import asyncio, sys
sys.path.insert(0, %(root)r)
from meta1lite import compat
compat.configure_logging("child", "error")
from meta1lite.spool import Spool

def body(qid):
    return (qid.encode() * 400)[:len(qid) * (50 + int(qid[-1], 36) * 20)]

async def session(sp):
    while True:
        w = sp.new_message()
        b = body(w.queue_id)
        for i in range(0, len(b), 700):
            w.write(b[i:i + 700])
            await asyncio.sleep(0)
        qid = await sp.commit(w, "s@x", ["r@y"])
        sys.stdout.write(qid + "\n")
        sys.stdout.flush()

async def main():
    sp = Spool(%(path)r, 1 << 40, 1 << 30, 0, segment_size=16384, chunk_size=1024)
    sp.recover()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.gather(*[session(sp) for _ in range(8)])

asyncio.run(main())
"""


def _child_body(qid):
    return (qid.encode() * 400)[:len(qid) * (50 + int(qid[-1], 36) * 20)]


def test_sigkill_never_loses_acknowledged_messages(tmp_path):
    path = str(tmp_path / "spool")
    script = tmp_path / "child.py"
    script.write_text(CHILD % {"root": ROOT, "path": path})
    acked = set()
    rnd = random.Random(1234)
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rnd.uniform(0.01, 0.25))
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0].decode()
        acked.update(line for line in out.split("\n") if len(line) == 12)
        sp = open_spool(path, segment_size=16384, chunk_size=1024)
        have = {m.id for m in sp.messages()}
        missing = acked - have
        assert not missing, "lost acknowledged messages: %r" % sorted(missing)[:5]
        for qid in rnd.sample(sorted(acked), min(20, len(acked))):
            assert b"".join(sp.read_body(qid)) == _child_body(qid)
        # deliver some, so later rounds also recycle segments
        done = rnd.sample(sorted(acked), len(acked) // 3)

        async def deliver():
            for qid in done:
                await sp.record_attempt(qid, [(0, "sent", "250 ok", None)])
        asyncio.run(deliver())
        acked.difference_update(done)
        sp.close()
    print("\nkill rounds: 20, acknowledged and still queued at the end: %d" % len(acked))
    assert len(acked) > 20


_BASE = {}


def _base_spool(root):
    """A spool with messages in several segments, some delivered, built once."""
    if "path" not in _BASE:
        path = os.path.join(root, "base")
        sp = open_spool(path, segment_size=4096, chunk_size=300)
        ids = [asyncio.run(commit(sp, bytes([i % 250 + 1]) * (200 + 97 * i), ("a@x", "b@y")))
               for i in range(25)]

        async def attempts():
            for q in ids[::3]:
                await sp.record_attempt(q, [(0, "sent", "250", None), (1, "deferred", "451", 5)])
            for q in ids[::6]:
                await sp.record_attempt(q, [(1, "sent", "250", None)])
            sp.hold(ids[1])
        asyncio.run(attempts())
        sp.close()
        _BASE["path"] = path
    return _BASE["path"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(damage=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 10 ** 6), st.integers(0, 7),
                                 st.booleans()), min_size=1, max_size=6))
def test_random_damage_never_breaks_recovery(tmp_path_factory, damage):
    root = str(tmp_path_factory.getbasetemp())
    base = _base_spool(root)
    work = os.path.join(root, "work")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    files = sorted(os.path.join(work, "seg", n) for n in os.listdir(os.path.join(work, "seg")))
    for which, offset, bit, truncate in damage:
        path = files[which % len(files)]
        size = os.path.getsize(path)
        if size == 0:
            continue
        with open(path, "r+b") as f:
            if truncate:
                f.truncate(offset % size)
            else:
                f.seek(offset % size)
                b = f.read(1)
                f.seek(offset % size)
                f.write(bytes([b[0] ^ (1 << bit)]))
    sp = open_spool(work, segment_size=4096, chunk_size=300)
    for msg in sp.messages():
        try:
            body = b"".join(sp.read_body(msg.id))
            assert len(body) == msg.size
        except CorruptMessage:
            pass
    sp.close()
    sp = open_spool(work, segment_size=4096, chunk_size=300)     # a second start settles too
    sp.close()


def test_an_incoming_file_that_cannot_be_adopted_is_not_retried_at_every_scan(tmp_path, monkeypatch):
    # the 5-second scan of incoming/ imports recovery.py (a board's, a router's heap) for
    # a new file only: one whose adoption failed waits for the next new file or a restart
    from meta1lite.spool import format as fmt
    from meta1lite.spool import recovery
    sp = open_spool(tmp_path / "spool")
    tries = []
    monkeypatch.setattr(recovery.Recovery, "scan_incoming", lambda self, names: tries.append(1) or 0)
    (tmp_path / "spool" / fmt.INCOMING_DIR / "stuck").write_bytes(b"not adoptable here")
    assert [sp.scan_incoming() for _ in range(3)] == [0, 0, 0]
    assert len(tries) == 1
    (tmp_path / "spool" / fmt.INCOMING_DIR / "new").write_bytes(b"another")
    sp.scan_incoming()
    assert len(tries) == 2


def test_the_record_cache_is_bounded_and_older_envelopes_come_from_disk(tmp_path, monkeypatch):
    # CPython keeps the last RECENT_RECORDS records in memory: a queue longer than
    # that still reads every envelope, the older ones from their segment again
    from meta1lite.spool import journal
    monkeypatch.setattr(journal, "RECENT_RECORDS", 8)
    sp = open_spool(tmp_path / "spool")
    ids = [asyncio.run(commit(sp, b"Subject: %d\r\n\r\nbody\r\n" % i, rcpts=("r%d@x.example" % i,)))
           for i in range(20)]
    assert len(sp.journal.recent) == 8
    opened, real_open = [], sp.journal.open_read
    monkeypatch.setattr(sp.journal, "open_read", lambda path: opened.append(path) or real_open(path))
    for n, queue_id in enumerate(ids):
        assert [r.addr for r in sp.get(queue_id).recipients] == ["r%d@x.example" % n]
    assert opened and len(sp.journal.recent) == 8
    sp.close()

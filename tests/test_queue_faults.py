# CPython-only tests of the queue against faults of the storage under it: a journal
# segment that cannot be opened at start-up, an fsync that fails (Linux then reports
# the lost writeback once and the next fsync succeeds), the MicroPython unix
# port's directory entries (it cannot fsync a directory), and a damaged message's
# copy in corrupt/ (on disk before its done record), a new spool's directories (each
# synced in its parent), a spool on FAT (named at start). Each models the fault with
# a shim on the file primitives and the power cut by what the disk would keep.
import asyncio
import builtins
import errno
import os
import sys
import time

import pytest
from helpers.spools import BIG, commit, open_spool

from meta1lite import compat, durable
from meta1lite.spool import Spool
from meta1lite.spool import recovery as recovery_mod

PAGE = 4096


@pytest.fixture(autouse=True)
def _quiet_log(monkeypatch):
    monkeypatch.setattr(compat.log, "threshold", 100)


def _body(n, seed=1):
    return bytes(((i * 131 + seed * 7 + (i >> 7)) & 0xFF) for i in range(n))


def test_a_segment_that_cannot_be_opened_stops_the_start_and_is_kept(tmp_path, monkeypatch):
    # Without that segment the journal would recycle the segments its messages still
    # need, and the next segment it creates could take its number (open "wb": the
    # acknowledged messages in it destroyed). The start fails with the file named;
    # once it opens again, every message is there.
    d = tmp_path / "spool"
    geo = {"segment_size": 8192, "chunk_size": 1024}
    sp = open_spool(d, **geo)
    ids = [asyncio.run(commit(sp, _body(1500, i))) for i in range(6)]
    assert [q for q in ids if sp.get(q).env_seg == 2]
    sp.close()
    seg2 = os.path.realpath(str(d / "seg" / "00000002"))
    real_open = builtins.open

    def flaky_open(path, *args, **kw):
        if os.path.realpath(str(path)) == seg2:
            raise OSError(errno.EIO, "Input/output error")      # a flaky card or stick
        return real_open(path, *args, **kw)
    monkeypatch.setattr(recovery_mod, "open", flaky_open, raising=False)
    with pytest.raises(OSError) as failed:
        open_spool(d, **geo)
    assert "00000002: cannot open" in str(failed.value) and "not started" in str(failed.value)
    monkeypatch.undo()
    sp2 = open_spool(d, **geo)                   # the next start: the file reads again
    missing = [q for q in ids if not sp2.exists(q)]
    sp2.close()
    assert not missing


def test_a_queue_tool_skips_a_segment_it_cannot_open(tmp_path, monkeypatch):
    d = tmp_path / "spool"
    sp = open_spool(d)
    asyncio.run(commit(sp, _body(500)))
    seg = os.path.realpath(sp.journal._cur.path)
    sp.close()
    real_open = builtins.open

    def denied(path, *args, **kw):
        if os.path.realpath(str(path)) == seg:
            raise OSError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kw)
    monkeypatch.setattr(recovery_mod, "open", denied, raising=False)
    tool = Spool(str(d), BIG, 100000, 0)
    assert tool.recover(readonly=True) == 0         # read-only: a warning, no refusal


def test_a_failed_fsync_refuses_the_message_whose_chunks_it_covered(tmp_path, monkeypatch):
    # Session A streams chunks; session B's commit meets EIO in its sync round (B gets
    # its 451). Linux marks the failed pages clean and the next fsync of that file
    # returns 0: A must not get a 250 for chunks the disk dropped. A's commit fails
    # too (the client sends again), appends move to a new segment, and every message
    # acknowledged afterwards survives the pages' loss.
    d = tmp_path / "spool"
    sp = open_spool(d, chunk_size=4096)     # A's first 30,000 bytes: chunks written before B
    seg_path = os.path.realpath(sp.journal._cur.path)
    synced = os.path.getsize(seg_path)
    lost, real = [], durable.fsync_file

    def fsync_file(f):
        if not lost and os.path.realpath(f.name) == seg_path:
            lost.append((synced, os.fstat(f.fileno()).st_size))
            raise OSError(errno.EIO, "Input/output error")
        real(f)
    monkeypatch.setattr(durable, "fsync_file", fsync_file)
    body_a = _body(40000, 3)

    async def main():
        wa = sp.new_message()
        for i in range(0, 30000, 1000):
            wa.write(body_a[i:i + 1000])
        with pytest.raises(OSError):
            await commit(sp, _body(500, 4))        # B
        for i in range(30000, len(body_a), 1000):
            wa.write(body_a[i:i + 1000])
        with pytest.raises(OSError):
            await sp.commit(wa, "s@x.example", ["r@x.example"])   # A: 451, not 250
        return await commit(sp, _body(3000, 5))    # C, after the failure: 250
    qid = asyncio.run(main())
    assert sp.get(qid).env_seg != sp.journal.failed[0]      # C went to a new segment
    sp.close()
    start, stop = lost[0]
    start, stop = -(-start // PAGE) * PAGE, stop // PAGE * PAGE
    assert stop > start
    with open(seg_path, "r+b") as f:                # the power cut: those pages were dropped
        f.seek(start)
        f.write(bytes(stop - start))
    sp2 = open_spool(d)
    assert [m.id for m in sp2.messages()] == [qid]
    assert b"".join(bytes(c) for c in sp2.read_body(qid)) == _body(3000, 5)
    sp2.close()


def test_unix_port_a_new_segment_is_synced_before_a_commit_can_use_it(tmp_path, monkeypatch):
    # The unix port cannot fsync a directory. A 250K message passes the current
    # segment's half (the next segment is created then) and rolls into that new
    # segment: its entry must be durable (the `sync` command) before the 250. Power
    # cut model: entries made after the last sync are gone.
    d = tmp_path / "spool"
    seg_dir = str(d / "seg")
    synced = [set()]

    def sync_all():
        synced[0] = set(os.listdir(seg_dir)) if os.path.isdir(seg_dir) else set()
        return True
    monkeypatch.setattr(durable, "sync_dir", lambda path: False)
    monkeypatch.setattr(durable, "CAN_SYNC_ALL", True)
    monkeypatch.setattr(durable, "sync_all", sync_all)
    sp = open_spool(d)
    asyncio.run(commit(sp, _body(300 * 1024), piece=4096))
    qid = asyncio.run(commit(sp, _body(250 * 1024, 2), piece=4096))
    sp.close()
    for name in set(os.listdir(seg_dir)) - synced[0]:      # the power cut
        os.remove(os.path.join(seg_dir, name))
    sp2 = open_spool(d)
    assert sp2.exists(qid)
    assert b"".join(bytes(c) for c in sp2.read_body(qid)) == _body(250 * 1024, 2)
    sp2.close()


def test_a_commit_during_a_failing_sync_round_fails_with_it(tmp_path, monkeypatch):
    # A appends its envelope while B's round is in the worker thread's fsync, which
    # then fails: A waits for that round too, and must not start a round of its own
    # whose fsync of the same file returns 0 (Linux reports the error once)
    d = tmp_path / "spool"
    sp = open_spool(d)
    seg_path = os.path.realpath(sp.journal._cur.path)
    real, failed = durable.fsync_file, []

    def slow_failing_fsync(f):
        if not failed and os.path.realpath(f.name) == seg_path:
            failed.append(True)
            time.sleep(0.3)
            raise OSError(errno.EIO, "Input/output error")
        real(f)
    monkeypatch.setattr(durable, "fsync_file", slow_failing_fsync)

    async def main():
        wa = sp.new_message()
        wa.write(_body(3000, 1))
        b = asyncio.ensure_future(commit(sp, _body(500, 2)))
        await asyncio.sleep(0.1)                    # B's round is in its fsync now
        a = asyncio.ensure_future(sp.commit(wa, "s@x.example", ["r@x.example"]))
        results = await asyncio.gather(a, b, return_exceptions=True)
        return results
    got = asyncio.run(main())
    assert failed and all(isinstance(r, OSError) for r in got), got
    assert sp.count() == 0
    sp.close()


def test_a_salvaged_message_is_on_disk_before_its_done_record(tmp_path, monkeypatch):
    # A message whose body is damaged is copied to corrupt/ID and then marked done. A
    # copy that exists is not made again, so after a power cut between the two a copy
    # still in the page cache would have stood in for the salvage: empty or cut.
    d = tmp_path / "spool"
    sp = open_spool(d, chunk_size=2048)     # three chunks
    body = _body(6000)
    queue_id = asyncio.run(commit(sp, body))
    path = sp.journal._cur.path
    sp.close()
    with open(path, "r+b") as f:
        data = f.read()
        at = data.find(body[3000:3100]) + 50            # inside the second chunk
        f.seek(at)
        f.write(bytes([data[at] ^ 0xFF]))
    order = []
    real_fsync, real_sync_new = durable.fsync_file, durable.sync_new_entries

    def fsync_file(f):
        order.append("fsync " + os.path.basename(getattr(f, "name", "")))
        real_fsync(f)

    def sync_new_entries(path):
        order.append("sync dir " + os.path.basename(path))
        return real_sync_new(path)
    monkeypatch.setattr(durable, "fsync_file", fsync_file)
    monkeypatch.setattr(durable, "sync_new_entries", sync_new_entries)
    sp2 = Spool(str(d), BIG, 100000, 0)
    real_append = sp2.journal.append_record

    def append_record(ftype, tag, payload):
        order.append("record %s" % payload.get("why"))
        return real_append(ftype, tag, payload)
    monkeypatch.setattr(sp2.journal, "append_record", append_record)
    sp2.recover()
    sp2.close()
    assert not sp2.exists(queue_id)
    with open(str(d / "corrupt" / queue_id), "rb") as f:
        copy = f.read()
    assert queue_id.encode() in copy[:200] and len(copy) > 1000    # envelope, then chunks
    assert "record corrupt" in order
    done = order.index("record corrupt")
    assert order.index("fsync " + queue_id) < done and order.index("sync dir corrupt") < done, order


def test_a_new_spool_is_durable_in_the_directories_above_it(tmp_path, monkeypatch):
    # The first start makes the spool and its folders; a segment synced inside a
    # folder whose own entry is still in the page cache would vanish with it.
    events = []
    real_mkdir = os.mkdir

    def mkdir(path, *args):
        real_mkdir(path, *args)
        events.append(("mkdir", str(path)))
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(durable, "sync_dir", lambda path: events.append(("sync", str(path))) or True)
    open_spool(tmp_path / "var" / "spool").close()
    made = [path for kind, path in events if kind == "mkdir"]
    assert str(tmp_path / "var") in made and str(tmp_path / "var" / "spool" / "seg") in made
    for at, (kind, path) in enumerate(events):
        if kind == "mkdir":
            assert ("sync", os.path.dirname(path)) in events[at:], (path, events)


class VfsFat:          # MicroPython's filesystem classes, named as durable.mount_type sees them
    pass


class VfsLfs2:
    pass


def _fake_vfs(*mounts):
    """A vfs module whose mount() lists (FS class instance, mount point) for each
    (point, class) given."""
    class FakeVfs:
        @staticmethod
        def mount():
            return [(cls(), point) for point, cls in mounts]
    return FakeVfs


def test_a_spool_on_fat_is_named_at_start(tmp_path, monkeypatch):
    # stm32 formats its flash FAT (no journal; a rename is a remove then a rename):
    # the relay says so once at start, with what to do
    lines = []
    monkeypatch.setitem(sys.modules, "vfs", _fake_vfs(("/", VfsFat)))
    monkeypatch.setattr(recovery_mod, "log", lambda level, text: lines.append((level, text)))
    open_spool(tmp_path / "spool").close()
    warned = [text for level, text in lines if level == "warning" and "FAT" in text]
    assert len(warned) == 1 and "LittleFS2" in warned[0], lines
    lines.clear()
    monkeypatch.setitem(sys.modules, "vfs", None)      # CPython: no mount table
    open_spool(tmp_path / "spool2").close()
    assert not [text for _, text in lines if "FAT" in text]


def test_a_relative_spool_on_fat_is_named_too(monkeypatch):
    # stm32's boot changes to /flash: `spool = "spool";` is /flash/spool on the FAT
    # flash, but a relative path matched no mount point
    monkeypatch.setitem(sys.modules, "vfs", _fake_vfs(("/", VfsLfs2), ("/flash", VfsFat)))
    monkeypatch.setattr(os, "getcwd", lambda: "/flash")
    assert durable.mount_type("/flash/spool") == "VfsFat"
    assert durable.mount_type("spool") == "VfsFat"
    assert durable.mount_type("./spool") == "VfsFat"
    monkeypatch.setattr(os, "getcwd", lambda: "/")
    assert durable.mount_type("spool") == "VfsLfs2"

# Unit tests of meta1lite.spool (the journal queue), run under CPython and again
# under the MicroPython unix port. Shared subset: no pytest, no f-strings.
import os

from support import fresh_dir, raises, rmtree

from meta1lite import compat, durable
from meta1lite.spool import CorruptMessage, Spool, SpoolFull
from meta1lite.spool import format as fmt

BIG = 10 * 1024 * 1024
# Compiled from source with the test module, the spool modules take most of the
# 64-bit unix port's heap (the 6,000-byte bodies of the MemoryError test need a hole
# after that: it passed at 224K before the buffer pool, 256K before the journal
# imported heap.py for its file-handle reserve, needs 288K with it); the
# board figures come from the frozen firmware (tests/test_board_sim.py) and the .mpy
# bundle (tests/test_spool_memory.py: 1,000 messages recovered in a 256K heap).
UPY_HEAP = "288K"


def _open(path, **kw):
    opts = {"max_queue_size": BIG, "max_messages": 1000, "min_free_space": 0}
    opts.update(kw)
    sp = Spool(path, **opts)
    sp.recover()
    return sp


def _pat(seed, start, n):
    out = bytearray(n)
    for k in range(n):
        i = start + k
        out[k] = (i * 131 + seed * 7 + (i >> 7)) & 0xFF
    return out


def _body(n, seed=1):
    return _pat(seed, 0, n)


async def _commit_n(sp, n, seed=1, sender="a@b.example", rcpts=("c@d.example",), piece=700, info=None):
    writer = sp.new_message()
    for start in range(0, n, piece):
        writer.write(_pat(seed, start, min(piece, n - start)))
        await compat.asyncio.sleep(0)
    return await sp.commit(writer, sender, list(rcpts), info)


async def _commit(sp, body, sender="a@b.example", rcpts=("c@d.example",), piece=700, info=None):
    writer = sp.new_message()
    for start in range(0, len(body), piece):
        writer.write(body[start:start + piece])
        await compat.asyncio.sleep(0)
    return await sp.commit(writer, sender, list(rcpts), info)


def _commit_sync(sp, body, **kw):
    return compat.asyncio.run(_commit(sp, body, **kw))


def _commit_pat(sp, n, seed=1, **kw):
    return compat.asyncio.run(_commit_n(sp, n, seed, **kw))


def _read(sp, queue_id):
    return b"".join(sp.read_body(queue_id))


def _same(sp, queue_id, n, seed=1):
    """True if the body of queue_id is the pattern (n, seed), compared chunk by chunk."""
    pos = 0
    for chunk in sp.read_body(queue_id):
        if chunk != _pat(seed, pos, len(chunk)):
            return False
        pos += len(chunk)
    return pos == n


def _files(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _quiet():
    compat.configure_logging("test", "error")


def test_commit_then_recover_identical():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d)
    info = {"client": "host.example[192.0.2.1]", "helo": "h"}
    qid = _commit_pat(sp, 10000, rcpts=("x@y.example", "z@y.example"), info=info)
    assert len(qid) == 12 and _same(sp, qid, 10000)
    before = sp.get(qid)
    sp.close()
    sp2 = _open(d)
    assert sp2.recover.__name__ and len(sp2.messages()) == 1
    m = sp2.get(qid)
    assert m.sender == "a@b.example" and m.size == 10000 and m.info == info
    assert [r.addr for r in m.recipients] == ["x@y.example", "z@y.example"]
    assert [r.status for r in m.recipients] == ["queued", "queued"]
    assert m.arrival == before.arrival and not m.held
    assert _same(sp2, qid, 10000)
    sp2.close()


def test_read_body_reusing_one_buffer():
    # delivery reads full chunks into one pooled buffer; each is right when taken,
    # and the buffer goes back to the pool for the next message or writer
    _quiet()
    sp = _open(fresh_dir("spool"))
    size = 2 * sp.chunk_size + sp.chunk_size // 2       # 2 full chunks and a short one
    qid = _commit_pat(sp, size)
    pos, seen = 0, []
    for chunk in sp.read_body(qid, True):
        assert bytes(chunk) == bytes(_pat(1, pos, len(chunk)))
        pos += len(chunk)
        seen.append(chunk)
    assert pos == size and len(seen) == 3 and seen[0] is seen[1]   # full chunks: one buffer, reused
    # the short last chunk: a view of that buffer on MicroPython, new bytes on CPython
    assert isinstance(seen[-1], memoryview) == compat.MICROPYTHON
    assert sp.buffers.free and seen[0] is sp.buffers.take()
    assert _same(sp, qid, size)                        # without reuse: separate bytes
    sp.close()


def test_empty_body_message():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d)
    qid = _commit_sync(sp, b"")
    sp.close()
    sp = _open(d)
    assert _read(sp, qid) == b"" and sp.get(qid).size == 0


def test_twenty_concurrent_commits_recover():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d, chunk_size=512)

    async def main():
        return await compat.asyncio.gather(*[_commit_n(sp, 1500 + 37 * i, i, piece=300) for i in range(20)])
    ids = compat.asyncio.run(main())
    assert len(set(ids)) == 20
    sp.close()
    sp = _open(d, chunk_size=512)
    assert len(sp.messages()) == 20
    for i, qid in enumerate(ids):
        assert _same(sp, qid, 1500 + 37 * i, i)
    sp.close()


def test_truncated_tail_every_offset():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d, chunk_size=64)
    bodies = [_body(150, i + 1) for i in range(3)]
    ids = [_commit_sync(sp, b, piece=50) for b in bodies]
    ends = [sp.get(q).env_end for q in ids]
    sp.close()
    with open(d + "/seg/00000001", "rb") as f:
        data = f.read()
    work = d + "/work"
    for cut in range(ends[0], len(data) + 1):
        if durable.exists(work):
            rmtree(work)
        os.mkdir(work)
        os.mkdir(work + "/seg")
        with open(work + "/seg/00000001", "wb") as f:
            f.write(data[:cut])
        sp = _open(work, chunk_size=64)
        alive = [q for q, end in zip(ids, ends) if end <= cut]
        assert sorted(m.id for m in sp.messages()) == sorted(alive), cut
        for q in alive:
            assert _read(sp, q) == bodies[ids.index(q)]
        sp.close()


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes((b[0] ^ 0x10,)))


def test_bitflip_in_middle_goes_to_corrupt():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d, chunk_size=100)
    bodies = [_body(350, i + 1) for i in range(5)]
    ids = [_commit_sync(sp, b) for b in bodies]
    bad_env = sp.get(ids[1]).env_end - 4           # inside message 2's envelope
    bad_chunk = sp.get(ids[3]).first + fmt.HEAD_SIZE + 30   # inside message 4's chunk 0
    sp.close()
    _flip(d + "/seg/00000001", bad_env)
    _flip(d + "/seg/00000001", bad_chunk)
    sp = _open(d, chunk_size=100)
    assert sorted(m.id for m in sp.messages()) == sorted([ids[0], ids[2], ids[4]])
    for i in (0, 2, 4):
        assert _read(sp, ids[i]) == bodies[i]
    found = _files(d + "/corrupt")
    assert ids[3] in found, found
    assert len(found) >= 3, found
    sp.close()
    sp = _open(d, chunk_size=100)       # settled: nothing new, same three
    assert len(sp.messages()) == 3 and _files(d + "/corrupt") == found
    sp.close()


def test_bad_segment_files_do_not_stop_recovery():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d)
    qid = _commit_sync(sp, b"hello\r\n")
    sp.close()
    with open(d + "/seg/00000077", "wb") as f:
        f.write(b"\xff" * 500)
    with open(d + "/seg/00000078", "wb") as f:
        f.write(b"\x9d")
    with open(d + "/tmp/orphan", "wb") as f:
        f.write(b"x")
    with open(d + "/incoming/JUNK", "wb") as f:
        f.write(b"junk" * 100)
    sp = _open(d)
    assert [m.id for m in sp.messages()] == [qid]
    assert "seg-00000077" in _files(d + "/corrupt") and "in-JUNK" in _files(d + "/corrupt")
    assert "00000078" not in _files(d + "/seg") and _files(d + "/tmp") == []
    sp.close()


def test_limits_refuse_with_reason():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d, max_messages=2, max_queue_size=3000, chunk_size=256)
    assert sp.check_accept() is None
    _commit_sync(sp, _body(100))
    _commit_sync(sp, _body(100))
    reason = sp.check_accept()
    assert reason and "messages" in reason
    sp.close()
    sp = _open(d, max_messages=10, max_queue_size=3000, chunk_size=256)
    assert "size" in sp.check_accept(5000)
    exc = raises(SpoolFull, _commit_pat, sp, 4000)
    assert "size" in exc.reason
    assert sp.check_accept() is None and len(sp.messages()) == 2
    sp.close()
    sp = _open(d, max_messages=10, max_queue_size=3000)
    assert len(sp.messages()) == 2
    sp.close()
    sp = _open(d, min_free_space=1 << 62)
    assert "space" in sp.check_accept()
    sp.close()


def test_record_reserve_refuses_mail_but_records_delivery():
    # free space between min_free_space and min_free_space + record_reserve: new
    # mail is refused (452 4.3.1), delivery state and done records still append
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d, record_reserve=0)
    qid = _commit_pat(sp, 3000)
    free = durable.free_space(d)
    sp.close()
    sp = _open(d, min_free_space=free // 2, record_reserve=free)
    assert "space" in sp.check_accept()
    assert "space" in raises(SpoolFull, _commit_pat, sp, 100).reason
    compat.asyncio.run(sp.record_attempt(qid, [(0, "deferred", "451 later", 12345)]))
    compat.asyncio.run(sp.record_attempt(qid, [(0, "sent", "250 ok", None)]))
    assert sp.count() == 0
    sp.close()


def test_abort_leaves_nothing():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d, chunk_size=128)
    w = sp.new_message()
    w.write(_body(1000))
    w.abort()
    assert sp.check_accept() is None and sp._inflight_bytes == 0
    sp.close()
    sp = _open(d, chunk_size=128)
    assert sp.messages() == []
    sp.close()


def test_message_larger_than_segment_spans_segments():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d, segment_size=8192, chunk_size=1024)
    small = _commit_pat(sp, 500, 9)
    qid = _commit_pat(sp, 30000, piece=999)
    assert len(sp.get(qid).segs) >= 3
    assert _same(sp, qid, 30000)
    sp.close()
    sp = _open(d, segment_size=8192, chunk_size=1024)
    assert _same(sp, qid, 30000) and _same(sp, small, 500, 9)
    sp.close()


def _header_gen(path):
    with open(path, "rb") as f:
        return fmt.parse_head(f.read(fmt.HEAD_SIZE))[1]


def test_done_messages_free_and_recycle_segments():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d, segment_size=4096, chunk_size=512)
    ids = [_commit_pat(sp, 900, i + 1) for i in range(12)]
    gen1 = _header_gen(d + "/seg/00000001")
    assert len(_files(d + "/seg")) >= 4

    async def deliver():
        for q in ids:
            assert await sp.record_attempt(q, [(0, "sent", "250 2.0.0 ok", None)])
    compat.asyncio.run(deliver())
    assert sp.messages() == []
    assert _header_gen(d + "/seg/00000001") != gen1     # recycled in place
    assert len(_files(d + "/seg")) <= 4                 # current, next, 2 free
    again = [_commit_pat(sp, 900, 50 + i) for i in range(6)]
    sp.close()
    sp = _open(d, segment_size=4096, chunk_size=512)
    assert sorted(m.id for m in sp.messages()) == sorted(again)
    for i, q in enumerate(again):
        assert _same(sp, q, 900, 50 + i)
    sp.close()


def test_queue_ids_unique_and_shaped():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d)
    seen = set()
    for _ in range(400):
        w = sp.new_message()
        assert len(w.queue_id) == 12
        for c in w.queue_id:
            assert c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        assert fmt.tag_of(w.queue_id) == w.tag
        seen.add(w.tag)         # the random half: unique tags => unique IDs
        w.abort()
    assert len(seen) == 400
    sp.close()


def test_inject_and_scan_incoming():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d)
    other = Spool(d, BIG, 1000, 0)          # another process: no recover()
    qid = other.inject("root@host", ["u@x.example"], [_pat(1, 0, 4000), _pat(1, 4000, 5000)],
                       {"proto": "sendmail"})
    assert _files(d + "/incoming") == [qid] and _files(d + "/tmp") == []
    assert sp.scan_incoming() == 1 and sp.scan_incoming() == 0
    assert _same(sp, qid, 9000) and sp.get(qid).info == {"proto": "sendmail"}
    sp.close()
    sp = _open(d)
    assert _same(sp, qid, 9000)
    compat.asyncio.run(sp.record_attempt(qid, [(0, "deferred", "451 later", 12345)]))
    sp.close()
    sp = _open(d)
    assert sp.get(qid).recipients[0].status == "deferred"
    compat.asyncio.run(sp.record_attempt(qid, [(0, "sent", "250 ok", None)]))
    assert _files(d + "/incoming") == [] and sp.get(qid) is None
    sp.close()
    sp = _open(d)
    assert sp.messages() == []
    sp.close()


def test_hold_release_delete_persist():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d)
    a = _commit_sync(sp, b"A")
    b = _commit_sync(sp, b"B")
    assert sp.hold(a) and sp.hold(b) and sp.release(b)
    assert not sp.hold("NOSUCHID0000")
    sp.close()
    sp = _open(d)
    assert sp.get(a).held and not sp.get(b).held
    assert sp.delete(a)
    sp.close()
    sp = _open(d)
    assert sp.get(a) is None and sp.get(b) is not None
    sp.close()


def test_record_attempt_persists_states():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d)
    qid = _commit_sync(sp, b"body", rcpts=("a@x", "b@x", "c@x"))

    async def attempt():
        await sp.record_attempt(qid, [(0, "sent", "250 2.0.0 ok", None),
                                      (1, "deferred", "451 4.7.1 try later", 1700000000),
                                      (2, "bounced", "550 5.1.1 no such user", None)])
    compat.asyncio.run(attempt())
    sp.close()
    sp = _open(d)
    r = sp.get(qid).recipients
    assert [x.status for x in r] == ["sent", "deferred", "bounced"]
    assert r[1].reply == "451 4.7.1 try later" and r[1].next_try == 1700000000
    assert r[1].attempts == 1 and r[0].attempts == 1
    compat.asyncio.run(sp.record_attempt(qid, [(1, "sent", "250 ok", None)]))
    assert sp.get(qid) is None
    sp.close()
    sp = _open(d)
    assert sp.messages() == []
    sp.close()


def test_spool_full_mid_data_leaves_nothing():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d, max_queue_size=2000, chunk_size=256)
    w = sp.new_message()
    for i in range(10):
        w.write(_pat(1, i * 500, 500))
    assert w.error is not None
    exc = raises(SpoolFull, compat.asyncio.run, sp.commit(w, "a@b", ["c@d"]))
    assert "size" in exc.reason and sp._inflight_bytes == 0
    ok = _commit_sync(sp, _body(500))
    sp.close()
    sp = _open(d, max_queue_size=2000, chunk_size=256)
    assert [m.id for m in sp.messages()] == [ok]
    sp.close()


def test_read_body_of_damaged_message_raises():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d, chunk_size=100)
    qid = _commit_sync(sp, _body(400))
    _flip(d + "/seg/00000001", sp.get(qid).first + fmt.HEAD_SIZE + 20)
    raises(CorruptMessage, _read, sp, qid)
    sp.close()


def test_listing_is_lazy_oldest_first_and_copies():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d)
    ids = [_commit_sync(sp, b"m%d" % i, rcpts=("a@x", "b@x")) for i in range(5)]
    listing = sp.messages()
    assert len(listing) == 5 and listing and sp.count() == 5
    got = [m.id for m in listing]
    assert sorted(got) == sorted(ids)
    arrivals = [m.arrival for m in listing]
    assert arrivals == sorted(arrivals)
    assert listing[0].id == got[0]
    m = sp.get(ids[2])
    m.recipients[0].status = "sent"         # a copy: changes nothing in the queue
    m.held = True
    assert sp.get(ids[2]).recipients[0].status == "queued" and not sp.get(ids[2]).held
    assert sp.get(ids[2]) is not sp.get(ids[2])
    assert sp.exists(ids[2]) and not sp.exists("NOSUCHID0000") and not sp.exists(ids[2].lower())
    assert sp.hold(ids[3]) and sp.is_held(ids[3]) and not sp.is_held(ids[2])
    compat.asyncio.run(sp.record_attempt(ids[0], [(0, "sent", "250 ok", None), (1, "sent", "250 ok", None)]))
    assert ids[0] not in [m.id for m in listing]     # finished meanwhile: skipped
    assert not sp.messages() == [] and len(sp.messages()) == 4
    sp.close()


def test_concurrent_attempts_on_one_message_finish_it():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d)
    qid = _commit_sync(sp, b"body", rcpts=("a@x", "b@y"))

    async def one(i, status):
        assert await sp.record_attempt(qid, [(i, status, "reply %d" % i, None)])

    async def both():
        await compat.asyncio.gather(one(0, "sent"), one(1, "bounced"))
    compat.asyncio.run(both())
    assert sp.get(qid) is None and not sp.messages()
    sp.close()
    sp = _open(d)
    assert sp.get(qid) is None and sp.count() == 0
    sp.close()


def test_long_replies_stay_on_disk_and_read_back():
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d, segment_size=4096, chunk_size=512)
    reply = "451 4.7.1 " + "x" * 400
    qid = _commit_pat(sp, 900, 3, rcpts=("a@x", "b@x", "c@x"))
    others = [_commit_pat(sp, 900, 10 + i) for i in range(6)]   # the states land in later segments

    async def attempts():
        await sp.record_attempt(qid, [(1, "deferred", reply, 1900000000)])
        for q in others:
            await sp.record_attempt(q, [(0, "sent", "250 ok", None)])
        await sp.record_attempt(qid, [(0, "sent", "250 2.0.0 ok", None), (1, "deferred", "452 full", 5)])
    compat.asyncio.run(attempts())
    for sp2 in (sp, None):
        if sp2 is None:
            sp.close()
            sp2 = sp = _open(d, segment_size=4096, chunk_size=512)
        r = sp2.get(qid).recipients
        assert [x.status for x in r] == ["sent", "deferred", "queued"]
        assert [x.attempts for x in r] == [1, 2, 0]
        assert r[1].reply == "452 full" and r[1].next_try == 5 and r[0].reply == "250 2.0.0 ok"
        assert r[2].reply is None and r[2].next_try is None and _same(sp2, qid, 900, 3)
    sp.close()


def test_index_keeps_messages_sharing_a_tag_apart():
    from meta1lite.spool.index import Index, head, pack
    from meta1lite.spool.message import Message, Recipient
    index = Index()
    recs = []
    for t in (5, 6, 7):
        m = Message(fmt.queue_id_of(t, 1234), 1234, "s", [Recipient("a")], 100 + t, 10 * t, None)
        recs.append(pack(m, {}))
        assert index.add(recs[-1])
    assert not index.add(recs[1]) and index.count == 3
    assert head(*index.find(1234, 6))[5] == 60
    index.remove(index.find(1234, 5))
    assert index.find(1234, 5) is None and head(*index.find(1234, 7))[5] == 70
    assert sorted(index) == sorted([fmt.queue_id_of(6, 1234), fmt.queue_id_of(7, 1234)])
    base, runs = index.order()
    assert base == 106 and [[k >> 32 for k in run] for run in runs] == [[0, 1]]
    for t in range(8, 60):                  # grow, then shrink the bucket
        m = Message(fmt.queue_id_of(t, 1234), 1234, "s", [Recipient("a")], 100 + t, 10 * t, None)
        assert index.add(pack(m, {}))
    for t in range(6, 59):
        index.remove(index.find(1234, t))
    assert index.count == 1 and head(*index.find(1234, 59))[5] == 590
    assert index.used[1234 % len(index.used)] == len(pack(m, {}))


def test_a_message_that_can_never_fit_is_told_apart_from_a_full_queue():
    # issue 11 item 5: bigger than max_queue_size (or than the file system less its
    # reserves) is permanent (TOO_BIG: smtps answers 552); a fuller queue is not
    from meta1lite.spool import TOO_BIG
    _quiet()
    d = fresh_dir("spool")
    sp = _open(d, max_queue_size=3000, chunk_size=256)
    assert sp.check_accept(3001) == TOO_BIG and sp.never_fits(3000) is None
    _commit_sync(sp, _body(2000))
    reason = sp.check_accept(2000)
    assert reason and reason != TOO_BIG
    exc = raises(SpoolFull, _commit_pat, sp, 1500)         # fits an empty queue: transient
    assert exc.reason != TOO_BIG
    exc = raises(SpoolFull, _commit_pat, sp, 4000)         # refused where the queue filled
    assert exc.reason != TOO_BIG and sp.never_fits(4000) == TOO_BIG    # (smtps: 552)
    sp.close()
    sp = _open(fresh_dir("spool"), max_queue_size=3000, chunk_size=256)
    assert raises(SpoolFull, _commit_pat, sp, 4000).reason == TOO_BIG
    sp.close()
    room = 10000
    sp = _open(d, min_free_space=durable.fs_size(d) - room, record_reserve=0)
    assert sp.check_accept(room + 1) == TOO_BIG and sp.check_accept(room) != TOO_BIG
    sp.close()
    sp = _open(d, min_free_space=1 << 62)                  # reserves beyond the disk: 452
    assert "space" in sp.check_accept(1)
    sp.close()


def _write_failing(sp, body, exc_at, exc):
    # write body into a new message while exc_at (a journal function name) raises exc
    from meta1lite.spool import journal as jmod
    real = getattr(jmod, exc_at)

    def failing(*args):
        raise exc
    setattr(jmod, exc_at, failing)
    writer = sp.new_message()
    try:
        writer.write(body)
        writer.flush()
    except MemoryError:
        writer.abort()
    else:
        raise AssertionError("no MemoryError")
    finally:
        setattr(jmod, exc_at, real)


def test_memory_error_while_rolling_or_appending_leaves_the_journal_usable():
    # issue 11 item 2: a MemoryError in the roll left the current segment's handle
    # None (every later append or sync: AttributeError, deliveries redone forever)
    d = fresh_dir("oom-roll")
    sp = _open(d, segment_size=4096)
    first = _commit_sync(sp, _body(1500))
    _write_failing(sp, _body(5000, 2), "open_rw", MemoryError())     # in _roll
    assert sp.journal._cur.f is not None
    _write_failing(sp, _body(800, 3), "write_all", MemoryError())   # in append
    assert not sp._writers and sp.check_accept() is None
    second = _commit_sync(sp, _body(6000, 4))
    assert compat.asyncio.run(sp.record_attempt(first, [(0, "sent", "250 ok", None)]))
    sp.close()
    sp2 = _open(d, segment_size=4096)
    assert [m.id for m in sp2.messages()] == [second]
    assert b"".join(sp2.read_body(second)) == _body(6000, 4)
    sp2.close()


class _Lines:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text


def _three_segments(d):
    sp = _open(d, segment_size=4096, chunk_size=256)
    ids = [_commit_pat(sp, 3000, i) for i in range(6)]
    sp.close()
    return ids


def test_truncated_older_segment_warns_and_keeps_its_tail():
    # issue 11 item 6: a non-final segment cut in a frame lost its messages silently
    d = fresh_dir("spool")
    _quiet()
    ids = _three_segments(d)
    path = d + "/seg/00000001"
    assert os.stat(d + "/seg/00000002")[6] > 1000          # the cut one is not the newest
    size = os.stat(path)[6]
    with open(path, "r+b") as f:
        f.seek(0)
        data = f.read(size - 100)
    with open(path, "wb") as f:
        f.write(data)
    lines = _Lines()
    compat.configure_logging("test", "warning", lines)
    sp = _open(d, segment_size=4096, chunk_size=256)
    _quiet()
    assert "truncated at offset" in lines.text and "are lost" in lines.text, lines.text
    names = os.listdir(d + "/corrupt")
    assert [n for n in names if n.startswith("seg-00000001-") and n.endswith("-truncated")], names
    assert len(sp.messages()) < len(ids)
    sp.close()


def test_empty_older_segment_goes_to_corrupt_with_a_warning():
    # issue 11 item 6: a zero-length segment was removed at info level with its messages
    d = fresh_dir("spool")
    _quiet()
    _three_segments(d)
    open(d + "/seg/00000001", "wb").close()
    lines = _Lines()
    compat.configure_logging("test", "warning", lines)
    _open(d, segment_size=4096, chunk_size=256).close()
    _quiet()
    assert "empty segment" in lines.text and "corrupt/seg-00000001" in lines.text, lines.text
    assert "seg-00000001" in os.listdir(d + "/corrupt")

# Unit tests of meta1lite.qmgr (scheduling, retries, bounces, bounds) with fake smar
# and smtpc over a real spool and a simulated clock. Run under CPython and again
# under the MicroPython unix port. Shared subset: no pytest, no f-strings.
from support import fresh_dir

from meta1lite import compat
from meta1lite.qmgr import manager as qmgr
from meta1lite.qmgr.control import LineReader
from meta1lite.smar.aliases import Aliases, UnknownAddress, parse
from meta1lite.spool import Spool
from meta1lite.spool import format as fmt

UPY_HEAP = "640K"
HOUR = 3600
SANE = qmgr.SANE_EPOCH + 10 ** 8
RP2_BOOT_CLOCK = 1609459200     # 2021-01-01 00:00:00: rp2's clock after a reset
asyncio = compat.asyncio


class Clock:
    def __init__(self, mono=1000, wall=SANE):
        self.mono = mono
        self.wall = wall

    def install(self):
        compat.set_clock(lambda: self.mono, lambda: self.wall)

    def advance(self, seconds):
        self.mono += seconds
        if self.wall is not None and self.wall >= qmgr.SANE_EPOCH:
            self.wall += seconds


class Route:
    def __init__(self, key, via="direct", domain=None):
        self.key = key
        self.via = via
        self.domain = domain


class FakeSmar:
    def __init__(self, aliases=None):
        self.aliases = aliases or {}

    def expand(self, addr):
        if addr in self.aliases:
            found = self.aliases[addr]
            if found is None:
                raise UnknownAddress(addr)
            return found
        return [addr]

    def route(self, sender, rcpt):
        domain = rcpt.rpartition("@")[2]
        return Route("mx:" + domain, "mx", domain)

    async def next_hops(self, route, domain):
        return ["hop"]


class Res:
    def __init__(self, index, status, code, enhanced, text):
        self.index, self.status, self.code, self.enhanced, self.text = index, status, code, enhanced, text
        self.relay = "hop.test[127.0.0.1]:25"


class FakeSmtpc:
    """Replies per address: {addr: (status, code, enhanced, text)}; default sent.
    Destinations in `block` hang until released."""

    def __init__(self):
        self.replies = {}
        self.block = {}
        self.delivered = []         # (queue_id, sender, address, body)
        self.active = {}
        self.peak = {}

    async def deliver(self, route, hops, jobs, on_result=None):
        key = route.key
        self.active[key] = self.active.get(key, 0) + 1
        self.peak[key] = max(self.peak.get(key, 0), self.active[key])
        try:
            if key in self.block:
                await self.block[key].wait()
            await asyncio.sleep(0)
            return self._results(jobs)
        finally:
            self.active[key] -= 1

    def _results(self, jobs):
        out = {}
        for job in jobs:
            body = b"".join([bytes(chunk) for chunk in job.body()])    # chunks: one reused buffer
            res = []
            for index, addr in job.rcpts:
                st, code, enh, text = self.replies.get(addr, ("sent", 250, "2.0.0", "Ok"))
                if st == "sent":
                    self.delivered.append((job.queue_id, job.sender, addr, body))
                res.append(Res(index, st, code, enh, text))
            out[job.queue_id] = res
        return out


def _cfg(**qm):
    q = {"retry_min": HOUR, "retry_max": 4 * HOUR, "max_queue_lifetime": 5 * 24 * HOUR,
         "max_queue_size": 10 * 1024 * 1024, "max_messages": 1000, "min_free_space": 0}
    q.update(qm)
    return {"hostname": "relay.test", "postmaster": "postmaster@relay.test", "qmgr": q,
            "smtpc": {"max_connections": 10, "max_per_destination": 2}}


def _spool(cfg):
    q = cfg["qmgr"]
    sp = Spool(fresh_dir("qmgr"), q["max_queue_size"], q["max_messages"], q["min_free_space"])
    sp.recover()
    return sp


BODY = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: hi\r\n\r\nhello\r\n"


async def _queue(sp, sender="a@b.test", rcpts=("c@d.test",), body=BODY):
    w = sp.new_message()
    w.write(body)
    return await sp.commit(w, sender, list(rcpts), {})


async def _queue_n(sp, n, **kw):
    out = []
    for _ in range(n):          # MicroPython: no await inside a comprehension
        out.append(await _queue(sp, **kw))
    return out


class Rig:
    def __init__(self, cfg=None, smar=None, clock=None):
        self.cfg = cfg or _cfg()
        self.clock = clock or Clock()
        self.clock.install()
        self.sp = _spool(self.cfg)
        self.smtpc = FakeSmtpc()
        self.qm = qmgr.QueueManager(self.cfg, self.sp, smar or FakeSmar(), self.smtpc)
        self.task = None

    def start(self):
        self.task = asyncio.create_task(self.qm.run())

    async def settle(self, cond=None, rounds=5000):
        for _ in range(rounds):
            await asyncio.sleep(0.001)
            if cond is not None and cond():
                return True
        return cond is None

    async def advance(self, seconds):
        self.clock.advance(seconds)
        self.qm.wake()
        await self.settle(None, 20)

    async def stop(self):
        await self.qm.stop()
        self.task.cancel()
        await asyncio.sleep(0)
        self.sp.close()
        compat.set_clock()


def _run(coro):
    try:
        compat.asyncio.run(coro)
    finally:
        compat.set_clock()


def _dsns(sp):
    return [m for m in sp.messages() if m.sender == ""]


# --- pure functions -------------------------------------------------------------------

def test_backoff_stays_between_min_and_max():
    for attempts in range(1, 12):
        for rand in (0, 0.5, 1):
            d = qmgr.backoff(attempts, 300, 3600, rand)
            assert 300 <= d <= 3600, (attempts, rand, d)
    assert qmgr.backoff(1, 300, 3600, 0.5) == 300
    assert qmgr.backoff(3, 300, 3600, 0.5) == 1200
    assert qmgr.backoff(30, 300, 3600, 0) == 3600


def test_age_ignores_unknown_wall_clocks():
    assert qmgr.age_at(SANE - 50, SANE) == 50
    assert qmgr.age_at(100, SANE) == 0          # arrived while the clock said 1970
    assert qmgr.age_at(SANE, 100) == 0          # booted at 1970, no NTP yet
    assert qmgr.age_at(SANE + 99, SANE) == 0    # clock went back: never negative


def test_fmt_delay():
    assert qmgr.fmt_delay(0.001) == "0"
    assert qmgr.fmt_delay(0.5) == "0.5"
    assert qmgr.fmt_delay(3.14159) == "3.14"
    assert qmgr.fmt_delay(42.7) == "42"


# --- scheduling --------------------------------------------------------------------------

def test_delivers_and_removes():
    async def main():
        rig = Rig()
        ids = await _queue_n(rig.sp, 5, rcpts=("c@d.test", "e@f.test"))
        rig.start()
        assert await rig.settle(lambda: not rig.sp.messages())
        assert len(rig.smtpc.delivered) == 10
        assert sorted(set(d[0] for d in rig.smtpc.delivered)) == sorted(ids)
        assert rig.smtpc.delivered[0][3] == BODY
        await rig.stop()
    _run(main())


def test_new_mail_after_wake():
    async def main():
        rig = Rig()
        rig.start()
        await rig.settle(None, 5)
        await _queue(rig.sp)
        rig.qm.wake()
        assert await rig.settle(lambda: len(rig.smtpc.delivered) == 1)
        await rig.stop()
    _run(main())


def test_deferred_then_retried_after_backoff():
    async def main():
        rig = Rig()
        rig.smtpc.replies["c@d.test"] = ("deferred", 451, "4.3.0", "try later")
        qid = await _queue(rig.sp)
        rig.start()
        assert await rig.settle(lambda: rig.sp.get(qid).recipients[0].attempts == 1)
        rcpt = rig.sp.get(qid).recipients[0]
        assert rcpt.status == "deferred" and rcpt.next_try >= rig.clock.wall + HOUR - 1
        await rig.advance(HOUR // 2)
        assert rig.sp.get(qid).recipients[0].attempts == 1       # not yet due
        del rig.smtpc.replies["c@d.test"]
        await rig.advance(HOUR)
        assert await rig.settle(lambda: rig.sp.get(qid) is None)
        assert len(rig.smtpc.delivered) == 1
        await rig.stop()
    _run(main())


def test_flush_makes_deferred_due_now():
    async def main():
        rig = Rig()
        rig.smtpc.replies["c@d.test"] = ("deferred", 451, "4.3.0", "try later")
        qid = await _queue(rig.sp)
        rig.start()
        assert await rig.settle(lambda: rig.sp.get(qid).recipients[0].attempts == 1)
        del rig.smtpc.replies["c@d.test"]
        assert rig.qm.flush() == 1
        assert await rig.settle(lambda: rig.sp.get(qid) is None)
        await rig.stop()
    _run(main())


def test_outage_does_not_stall_other_destinations():
    async def main():
        rig = Rig()
        rig.smtpc.block["mx:dead.test"] = asyncio.Event()
        stuck = await _queue_n(rig.sp, 8, rcpts=("x@dead.test",))
        fine = await _queue_n(rig.sp, 8, rcpts=("y@live.test",))
        rig.start()
        assert await rig.settle(lambda: all(rig.sp.get(q) is None for q in fine))
        assert all(rig.sp.get(q) is not None for q in stuck)
        assert rig.smtpc.peak["mx:dead.test"] <= 2          # max_per_destination
        rig.smtpc.block["mx:dead.test"].set()
        assert await rig.settle(lambda: not rig.sp.messages())
        await rig.stop()
    _run(main())


def test_global_connection_bound():
    async def main():
        cfg = _cfg()
        cfg["smtpc"]["max_connections"] = 3
        rig = Rig(cfg)
        gate = asyncio.Event()
        for n in range(6):
            rig.smtpc.block["mx:d%d.test" % n] = gate
            await _queue(rig.sp, rcpts=("u@d%d.test" % n,))
        rig.start()
        await rig.settle(None, 30)
        assert sum(rig.smtpc.active.values()) == 3
        gate.set()
        assert await rig.settle(lambda: not rig.sp.messages())
        await rig.stop()
    _run(main())


def test_held_message_is_skipped_until_released():
    async def main():
        rig = Rig()
        qid = await _queue(rig.sp)
        rig.sp.hold(qid)
        rig.start()
        await rig.settle(None, 30)
        assert rig.sp.get(qid) is not None and not rig.smtpc.delivered
        rig.sp.release(qid)
        rig.qm.release(qid)
        assert await rig.settle(lambda: rig.sp.get(qid) is None)
        await rig.stop()
    _run(main())


# --- bounces -------------------------------------------------------------------------------

def test_permanent_failures_make_one_dsn():
    async def main():
        rig = Rig()
        rig.smtpc.replies["c@d.test"] = ("bounced", 550, "5.1.1", "no such user")
        rig.smtpc.replies["e@d.test"] = ("bounced", 550, "5.1.1", "no such user either")
        qid = await _queue(rig.sp, rcpts=("c@d.test", "e@d.test", "ok@d.test"))
        rig.start()
        assert await rig.settle(lambda: rig.sp.get(qid) is None and not rig.sp.messages())
        dsn = [d for d in rig.smtpc.delivered if d[1] == ""]
        assert len(dsn) == 1, dsn
        assert dsn[0][2] == "a@b.test"
        body = dsn[0][3]
        assert b"multipart/report; report-type=delivery-status" in body
        assert b"Final-Recipient: rfc822; c@d.test" in body
        assert b"Final-Recipient: rfc822; e@d.test" in body
        assert b"ok@d.test" not in body.split(b"text/rfc822-headers")[0]
        assert b"Subject: hi" in body and b"hello" not in body
        assert rig.qm.counts["dsn"] == 1
        await rig.stop()
    _run(main())


def test_null_sender_failure_goes_to_postmaster_once():
    async def main():
        rig = Rig()
        rig.smtpc.replies["c@d.test"] = ("bounced", 550, "5.1.1", "no such user")
        rig.smtpc.replies["postmaster@relay.test"] = ("bounced", 550, "5.1.1", "no postmaster")
        await _queue(rig.sp, sender="")
        rig.start()
        assert await rig.settle(lambda: not rig.sp.messages() and rig.qm.counts["bounced"] == 2)
        await rig.settle(None, 30)
        assert rig.qm.counts["dsn"] == 1
        assert not rig.sp.messages() and not rig.smtpc.delivered
        await rig.stop()
    _run(main())


def test_a_bounce_that_cannot_be_prepared_still_records_the_delivered_recipients():
    # the bounce code is imported at the first DSN (a board's heap): when that import
    # or the notice's preparation fails (MemoryError), the attempt's other outcomes are
    # recorded all the same; a recipient the next hop accepted is never sent again
    from meta1lite.qmgr import bounce
    saved = bounce.recipient_for

    def no_memory(*args):
        raise MemoryError("memory allocation failed")

    async def main():
        rig = Rig()
        rig.smtpc.replies["c@d.test"] = ("bounced", 550, "5.1.1", "no such user")
        qid = await _queue(rig.sp, rcpts=("ok@d.test", "c@d.test"))
        bounce.recipient_for = no_memory
        try:
            rig.start()
            assert await rig.settle(lambda: rig.sp.get(qid).recipients[0].attempts >= 1)
            await rig.settle(None, 10)
        finally:
            bounce.recipient_for = saved
        sent = [d for d in rig.smtpc.delivered if d[2] == "ok@d.test"]
        assert len(sent) == 1, rig.smtpc.delivered          # delivered once, recorded
        assert rig.qm.counts.get("dsn", 0) == 0
        await rig.stop()
    _run(main())


def test_null_sender_without_postmaster_is_dropped():
    async def main():
        cfg = _cfg()
        cfg["postmaster"] = ""
        rig = Rig(cfg)
        rig.smtpc.replies["c@d.test"] = ("bounced", 550, "5.1.1", "no such user")
        await _queue(rig.sp, sender="")
        rig.start()
        assert await rig.settle(lambda: not rig.sp.messages())
        await rig.settle(None, 20)
        assert rig.qm.counts["dsn"] == 0 and not rig.sp.messages()
        await rig.stop()
    _run(main())


def test_expiry_bounces_with_4_4_7():
    async def main():
        rig = Rig(_cfg(max_queue_lifetime=3 * HOUR))
        rig.smtpc.replies["c@d.test"] = ("deferred", 451, "4.3.0", "try later")
        qid = await _queue(rig.sp)
        rig.start()
        assert await rig.settle(lambda: rig.sp.get(qid).recipients[0].attempts == 1)
        for _ in range(6):
            await rig.advance(HOUR * 2)
            if rig.sp.get(qid) is None:
                break
        assert rig.sp.get(qid) is None
        dsn = [d for d in rig.smtpc.delivered if d[1] == ""]
        assert len(dsn) == 1 and b"Status: 4.4.7" in dsn[0][3] and b"Action: failed" in dsn[0][3]
        await rig.stop()
    _run(main())


def test_mail_queued_before_ntp_on_a_pico_is_not_years_old_once_ntp_answers():
    # rp2's clock starts at 2021-01-01 after a reset: mail queued before NTP answers,
    # deferred, then a restart with the right date: it must not look years old
    # (expired and bounced at its next try)
    async def main():
        cfg = _cfg(max_queue_lifetime=2 * HOUR, retry_min=60, retry_max=600)
        rig = Rig(cfg, clock=Clock(wall=RP2_BOOT_CLOCK))
        ids = await _queue_n(rig.sp, 3)
        for qid in ids:
            await rig.sp.record_attempt(qid, [(0, "deferred", "451 4.3.0 later", None)])
        rig.clock.wall = SANE                       # a restart; NTP answered
        rig.qm = qmgr.QueueManager(cfg, rig.sp, FakeSmar(), rig.smtpc)
        rig.smtpc.replies["c@d.test"] = ("deferred", 451, "4.3.0", "still later")
        rig.start()
        for _ in range(6):
            await rig.advance(300)
        assert all(rig.sp.get(q).recipients[0].attempts > 1 for q in ids)
        assert all(rig.sp.get(q) is not None for q in ids)     # nothing expired
        assert rig.qm.counts.get("dsn", 0) == 0
        await rig.stop()
    _run(main())


def test_boot_at_1970_neither_expires_nor_storms():
    async def main():
        rig = Rig(_cfg(max_queue_lifetime=2 * HOUR), clock=Clock(wall=SANE))
        ids = await _queue_n(rig.sp, 20)
        for qid in ids:
            await rig.sp.record_attempt(qid, [(0, "deferred", "451 4.3.0 later", SANE + 600)])
        rig.clock.wall = 1000       # reboot: the clock says 1970, NTP comes later
        rig.clock.mono = 5
        rig.smtpc.replies["c@d.test"] = ("deferred", 451, "4.3.0", "still later")
        rig.start()
        await rig.settle(None, 20)
        tried = sum(1 for q in ids if rig.sp.get(q).recipients[0].attempts > 1)
        assert tried <= 6, tried    # spread over retry_min (~7% due in 20 s), never all 20
        rig.clock.wall = SANE + 10 ** 6             # NTP: years later
        await rig.advance(HOUR // 2)
        assert all(rig.sp.get(q) is not None for q in ids)     # nothing expired
        assert rig.qm.counts["dsn"] == 0
        await rig.stop()
    _run(main())


def test_alias_expansion_and_unknown_local():
    async def main():
        smar = FakeSmar({"list@relay.test": ["p@x.test", "q@y.test"], "nobody@relay.test": None,
                         "root@relay.test": ["admin@z.test"]})
        rig = Rig(smar=smar)
        await _queue(rig.sp, rcpts=("list@relay.test", "nobody@relay.test", "root@relay.test"))
        rig.start()
        assert await rig.settle(lambda: not rig.sp.messages() and len(rig.smtpc.delivered) >= 4)
        got = sorted(d[2] for d in rig.smtpc.delivered)
        assert got == ["a@b.test", "admin@z.test", "p@x.test", "q@y.test"], got
        dsn = [d for d in rig.smtpc.delivered if d[1] == ""][0][3]
        assert b"nobody@relay.test" in dsn and b"Status: 5.1.1" in dsn
        await rig.stop()
    _run(main())


def _failing_body(sp, exc):
    def body(queue_id):
        yield b"Subject: x\r\n\r\nfirst chunk\r\n"
        raise exc
    sp.read_body = body


def _leaks_no_writer(exc):
    async def main():
        rig = Rig(cfg=_cfg(max_messages=2))
        msg = rig.sp.get(await _queue(rig.sp))
        _failing_body(rig.sp, exc)
        try:
            await rig.qm.attempts._fan_out(msg, [(0, ["p@x.test"])])
        except BaseException as got:  # noqa: BLE001 - CancelledError too
            assert type(got) is type(exc), repr(got)
        else:
            raise AssertionError("no exception")
        assert not rig.sp._writers, rig.sp._writers
        assert rig.sp.check_accept() is None, rig.sp.check_accept()
        rig.sp.close()
    _run(main())


def test_alias_fan_out_aborts_its_writer_when_the_body_fails():
    from meta1lite.spool import CorruptMessage
    _leaks_no_writer(CorruptMessage("chunk 1 unreadable"))


def test_alias_fan_out_aborts_its_writer_when_cancelled():
    _leaks_no_writer(asyncio.CancelledError())


def test_dsn_aborts_its_writer_when_building_fails():
    from meta1lite.qmgr import bounce

    async def main():
        rig = Rig(cfg=_cfg(max_messages=2))
        msg = rig.sp.get(await _queue(rig.sp))
        build = bounce.build

        def broken(*args):
            raise MemoryError()
        bounce.build = broken
        try:
            await bounce.queue_dsn(rig.cfg, rig.sp, msg, [], [], ("a@b.test", "sender"))
        except MemoryError:
            pass
        finally:
            bounce.build = build
        assert not rig.sp._writers, rig.sp._writers
        assert rig.sp.check_accept() is None
        rig.sp.close()
    _run(main())


def test_a_failing_pass_does_not_spin_on_new_mail():
    # a scheduler error (a MemoryError on a board) waits RECOVER_S whatever arrives
    async def main():
        rig = Rig()
        passes = [0]

        def failing(*_args):
            passes[0] += 1
            raise MemoryError("no room for the plan")
        rig.qm._pass = failing
        rig.start()
        for _ in range(50):
            rig.qm.wake()
            await asyncio.sleep(0.01)
        assert passes[0] == 1, passes[0]
        await rig.stop()
    _run(main())


def test_an_alias_that_expands_to_nothing_bounces_and_the_queue_goes_on():
    # team: carol, carol local with no alias: smtps takes RCPT TO:<team@relay.test>
    # (the aliases know team); qmgr gets AliasError, an UnknownAddress: a bounce, not
    # a pass that dies on it again and again with every other message behind it
    aliases = Aliases(parse(["team: carol\n"]), lambda domain: domain in ("", "relay.test"))
    assert aliases.knows("team@relay.test")

    class Smar(FakeSmar):
        def expand(self, addr):
            return aliases.expand(addr)

    async def main():
        rig = Rig(smar=Smar())
        await _queue(rig.sp, rcpts=("team@relay.test",))
        good = await _queue_n(rig.sp, 3)
        rig.start()
        assert await rig.settle(lambda: len(rig.smtpc.delivered) >= 4)
        sent = sorted(set(d[0] for d in rig.smtpc.delivered if d[1] != ""))
        assert sent == sorted(good), (sent, good)
        dsn = [d for d in rig.smtpc.delivered if d[1] == ""]
        assert dsn and b"team@relay.test" in dsn[0][3], dsn
        await rig.stop()
    _run(main())


def test_a_memory_error_launching_a_delivery_leaves_no_slot_taken():
    # a board's heap fails the task's creation: nothing stays counted, and with one
    # connection allowed the queue still drains once the pass is tried again
    cfg = _cfg()
    cfg["smtpc"]["max_connections"] = 1

    async def main():
        rig = Rig(cfg)
        ids = await _queue_n(rig.sp, 3)
        guard, calls = rig.qm._guard, [0]

        def failing_once(*args):
            calls[0] += 1
            if calls[0] == 1:
                raise MemoryError("memory allocation failed")
            return guard(*args)
        rig.qm._guard = failing_once
        recover, qmgr.RECOVER_S = qmgr.RECOVER_S, 0.01
        try:
            rig.start()
            assert await rig.settle(lambda: not rig.sp.messages()), rig.qm._active
        finally:
            qmgr.RECOVER_S = recover
        assert calls[0] > 1 and rig.qm._active == 0, (calls, rig.qm._active)
        assert sorted(set(d[0] for d in rig.smtpc.delivered)) == sorted(ids)
        await rig.stop()
    _run(main())


def _unreadable_once(sp):
    # the first spool.get() finds no readable envelope (EIO, EMFILE, a board's heap)
    get, fails = sp.get, [0]

    def unreadable_once(queue_id):
        if not fails[0]:
            fails[0] += 1
            return None
        return get(queue_id)
    sp.get = unreadable_once
    return fails


def test_an_envelope_unreadable_once_is_tried_again_after_retry_min():
    # one failed read (EIO, EMFILE, a board's heap) must not drop the message from
    # the schedule while the spool still holds it
    async def main():
        rig = Rig(_cfg(retry_min=60, retry_max=HOUR))
        qid = await _queue(rig.sp)
        fails = _unreadable_once(rig.sp)
        rig.start()
        await rig.settle(None, 20)
        assert fails[0] == 1 and not rig.smtpc.delivered and rig.sp.exists(qid)
        rig.clock.advance(61)           # its due time passes; the scheduler wakes with
        rig.qm._event.set()             # no rescan (wake() would rescan the spool)
        assert await rig.settle(lambda: not rig.sp.exists(qid))
        assert [d[0] for d in rig.smtpc.delivered] == [qid]
        await rig.stop()
    _run(main())


def test_an_envelope_unreadable_once_still_expires_on_time():
    # its lifetime counts from its arrival, not from each try
    async def main():
        rig = Rig(_cfg(retry_min=60, retry_max=600, max_queue_lifetime=2 * HOUR))
        qid = await _queue(rig.sp)
        rig.smtpc.replies["c@d.test"] = ("deferred", 451, "4.3.0", "later")
        fails = _unreadable_once(rig.sp)
        rig.start()
        await rig.settle(None, 20)
        assert fails[0] == 1
        for _ in range(36):                         # 3 hours
            await rig.advance(300)
        assert not rig.sp.exists(qid) and rig.qm.counts.get("dsn", 0) == 1, rig.qm.counts
        await rig.stop()
    _run(main())


def _cut_before_done(path):
    # a power cut that kept the file up to (not including) its done record
    with open(path, "rb") as f:
        data = f.read()
    cut = None
    for pos in range(len(data) - fmt.HEAD_SIZE, -1, -1):      # the last frame written
        if data[pos:pos + 2] == fmt.MAGIC and data[pos + 2] == fmt.T_DONE:
            cut = pos
            break
    assert cut is not None
    with open(path, "wb") as f:
        f.write(data[:cut])


def test_every_recipient_final_without_its_done_record_leaves_the_queue():
    # record_attempt appends the state record, then the done record; a power cut
    # between them leaves every recipient final and the message queued: the next
    # pass writes the done record (nothing is sent again)
    async def main():
        rig = Rig()
        qid = await _queue(rig.sp)
        assert await rig.sp.record_attempt(qid, [(0, "sent", "250 2.0.0 Ok", None)])
        path = rig.sp.journal._cur.path
        rig.sp.close()
        _cut_before_done(path)
        rig.sp = _reopen(rig.sp.path, rig.cfg)
        assert rig.sp.get(qid).recipients[0].status == "sent"
        rig.qm = qmgr.QueueManager(rig.cfg, rig.sp, FakeSmar(), rig.smtpc)
        rig.start()
        assert await rig.settle(lambda: not rig.sp.exists(qid))
        assert not rig.smtpc.delivered
        await rig.stop()
    _run(main())


def _reopen(path, cfg):
    q = cfg["qmgr"]
    sp = Spool(path, q["max_queue_size"], q["max_messages"], q["min_free_space"])
    sp.recover()
    return sp


# --- the control channel's line reader -------------------------------------------

class FakeReader:
    """A stream that hands out scripted pieces (CPython read / MicroPython readinto)."""

    def __init__(self, pieces):
        self.pieces = list(pieces)

    async def read(self, n):
        return self.pieces.pop(0)[:n] if self.pieces else b""

    async def readinto(self, buf):
        if not self.pieces:
            return 0
        piece = self.pieces.pop(0)
        buf[:len(piece)] = piece
        return len(piece)


def test_line_reader_splits_lines_and_bounds_them():
    async def go():
        r = LineReader(FakeReader([b"HELO a\r\nMA", b"IL x\r\n", b"tail"]), max_line=64)
        assert await r.readline() == b"HELO a\r\n"
        assert await r.readline() == b"MAIL x\r\n"
        assert await r.readline() == b"tail"
        assert await r.readline() == b""
        long = LineReader(FakeReader([b"x" * 40, b"y" * 40]), max_line=64)
        try:
            await long.readline()
        except ValueError as exc:
            assert "64" in str(exc)
        else:
            raise AssertionError("over-long line accepted")
    _run(go())


# --- the heap high-water sampler without a control socket (review) ------------------

def test_heap_high_water_is_sampled_without_a_control_socket():
    # A board has no control endpoint (its console asks in-process, qmgr.control.ask):
    # start_control then returns a ControlServer without a server, and the heap
    # high-water that `status` reports must still be sampled every HEAP_SAMPLE_MS, or
    # it is only the heap at the moment of the request.
    from meta1lite import heap
    from meta1lite.qmgr import control

    async def no_server(*args, **kwargs):
        return None

    saved = compat.start_unix_server, heap.heap_used
    compat.start_unix_server = no_server        # MicroPython: asyncio has none
    heap.heap_used = lambda: 1000               # a runtime with heap figures

    async def go():
        server = await control.start_control({"control": "unused-socket"}, None, None)
        try:
            assert server.server is None
            assert server.sampler is not None, "no heap high-water sampler on a board"
        finally:
            server.close()
    try:
        _run(go())
    finally:
        compat.start_unix_server, heap.heap_used = saved

# The supervisor (meta1lite/supervisor.py) on its own, with stand-in modules: a
# module that raises is restarted after a backoff that doubles up to restart_max
# and starts over once the module stayed up; the modules depending on it stop and
# restart after it, in order; a failed reset backs off again; every start, exit and
# restart is logged with its reason; machine.WDT (a fake machine module in
# sys.modules) is started with mcp.watchdog_ms and fed by the watcher. The watcher's
# clock is driven by hand (_look(now)). Shared subset: CPython and MicroPython.
import sys

from meta1lite import compat, process
from meta1lite import supervisor as sup

asyncio = compat.asyncio


class _Ring:
    """Captures compat.log lines."""

    def __init__(self):
        self.lines = []
        self.saved = compat.log.log

    def log(self, level, module, text):
        self.lines.append("%s %s" % (level, text))

    def __enter__(self):
        compat.log.log = self.log
        return self

    def __exit__(self, *exc):
        compat.log.log = self.saved

    def last_exit(self):
        found = ""
        for line in self.lines:
            if " exited: " in line:
                found = line
        return found

    def has(self, text):
        for line in self.lines:
            if text in line:
                return True
        return False


class _Rig:
    """Modules a <- b <- c (c needs b, b needs a) and d alone; counts resets."""

    def __init__(self, restart_max=8):
        self.resets = {"a": 0, "b": 0, "c": 0, "d": 0}
        self.broken = []
        mods = [sup.Module("a", (), None, self._reset("a")),
                sup.Module("b", ("a",), self._loop, self._reset("b")),
                sup.Module("c", ("b",), None, self._reset("c")),
                sup.Module("d", (), None, None)]
        self.sup = sup.Supervisor(mods, restart_max)
        self.sup.tick = 3600            # the test drives the watcher (_look)

    def _reset(self, name):
        def reset():
            if name in self.broken:
                raise OSError("cannot read /nonexistent")
            self.resets[name] += 1
        return reset

    async def _loop(self):
        while True:
            await asyncio.sleep(3600)

    def mod(self, name):
        return self.sup.find(name)


async def _settle():
    for _ in range(5):
        await asyncio.sleep(0)


def _run(coro):
    asyncio.run(coro)


def test_fault_restarts_with_backoff_and_dependents_in_order():
    async def go():
        rig = _Rig()
        with _Ring() as ring:
            rig.sup.start()
            await _settle()
            t0 = compat.real_monotonic()
            assert rig.sup.fault("a")
            await _settle()
            rig.sup._look(t0)
            assert ring.has("a exited: RuntimeError: fault injected; restarting in 1s with b, c")
            assert ring.has("b stopped: a, which it needs, died")
            assert rig.mod("b").task is None and rig.mod("c").task is None
            assert rig.mod("d").task is not None        # d needs nothing of a
            rig.sup._look(t0 + 0.5)                     # not due yet
            assert rig.mod("a").task is None and rig.resets["a"] == 0
            rig.sup._look(t0 + 1)
            assert [rig.resets[n] for n in "abcd"] == [1, 1, 1, 0]
            assert ring.has("a restarted (restart 1)") and ring.has("c restarted (restart 1)")
            await _settle()
            assert rig.sup.fault("a")                   # again at once: 2 s
            await _settle()
            rig.sup._look(t0 + 1.5)
            assert ring.has("restarting in 2s")
            rig.sup._look(t0 + 3.5)
            assert rig.mod("a").task is not None and rig.mod("a").restarts == 2
            await rig.sup.stop()
    _run(go())


def test_backoff_caps_and_starts_over_after_a_stable_run():
    async def go():
        rig = _Rig(restart_max=4)
        with _Ring() as ring:
            rig.sup.start()
            await _settle()
            now = compat.real_monotonic()
            for delay in (1, 2, 4, 4):
                rig.sup.fault("b")
                await _settle()
                rig.sup._look(now)
                assert ring.last_exit().endswith("restarting in %ds with c" % delay), ring.lines
                now += delay
                rig.sup._look(now)
                assert rig.mod("b").task is not None
                await _settle()
            rig.sup.fault("b")
            await _settle()
            rig.sup._look(now + sup.STABLE_S)          # it stayed up: from 1 s again
            assert ring.last_exit().endswith("restarting in 1s with c"), ring.lines
            await rig.sup.stop()
    _run(go())


def test_a_failed_reset_backs_off_and_fault_needs_a_running_module():
    async def go():
        rig = _Rig()
        with _Ring() as ring:
            rig.sup.start()
            await _settle()
            now = compat.real_monotonic()
            rig.broken.append("d")
            rig.sup.find("d").reset = rig._reset("d")
            rig.sup.fault("d")
            assert not rig.sup.fault("zz")
            await _settle()
            rig.sup._look(now)
            assert not rig.sup.fault("d")               # down until restarted
            rig.sup._look(now + 1)
            assert ring.has("d exited: restart failed: OSError: cannot read /nonexistent;"
                            " restarting in 2s")
            rig.broken.remove("d")
            rig.sup._look(now + 3)
            assert rig.mod("d").task is not None and rig.resets["d"] == 1
            assert rig.sup.status()["d"] == {"up": True, "restarts": 1}
            await rig.sup.stop()
            assert rig.mod("a").task is None and rig.sup.watcher is None
            rig.sup._look(now + 100)                    # nothing restarts after stop
            assert rig.mod("a").task is None
    _run(go())


class _FakeWDT:
    made = []
    longest = 8388                      # rp2's machine.WDT

    def __init__(self, timeout):
        if timeout > _FakeWDT.longest:
            raise ValueError("timeout too long")
        self.timeout = timeout
        self.feeds = 0
        _FakeWDT.made.append(self)

    def feed(self):
        self.feeds += 1


class _FakeMachine:
    WDT = _FakeWDT


def test_watchdog_is_started_and_fed_by_the_watcher():
    saved = sys.modules.get("machine")
    sys.modules["machine"] = _FakeMachine()
    try:
        assert process.watchdog(0) == (None, 0)          # 0 = off: never started
        wdt, ms = process.watchdog(300)
        assert _FakeWDT.made == [wdt] and wdt.timeout == 300 and ms == 300
        longest, ms = process.watchdog(20000)           # more than rp2 allows: its longest
        assert longest.timeout == ms == 8388

        async def go():
            s = sup.Supervisor([sup.Module("a", ())], 8, wdt, 300)
            assert s.tick <= 0.1                        # at least 3 feeds per timeout
            s.start()
            await asyncio.sleep(0.35)
            await s.stop()
        with _Ring():
            _run(go())
        assert wdt.feeds >= 2
    finally:
        if saved is None:
            del sys.modules["machine"]
        else:
            sys.modules["machine"] = saved


def test_a_long_watchdog_on_stm32_runs_at_stm32s_longest():
    # stm32's IWDG takes up to 32767 ms: a watchdog_ms of 40000 there must not run at
    # rp2's 8388, a quarter of what the board allows and of what was asked
    saved = sys.modules.get("machine")
    sys.modules["machine"] = _FakeMachine()
    try:
        _FakeWDT.longest = 32767
        wdt, ms = process.watchdog(40000)
        assert wdt.timeout == ms == 32767
        _FakeWDT.longest = 8388                         # rp2: still its own longest
        wdt, ms = process.watchdog(40000)
        assert wdt.timeout == ms == 8388
    finally:
        _FakeWDT.longest = 8388
        if saved is None:
            del sys.modules["machine"]
        else:
            sys.modules["machine"] = saved

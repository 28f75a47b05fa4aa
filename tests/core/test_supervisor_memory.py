# The supervisor when the heap is full at a bad moment (review of the board's
# recovery): a restart whose task cannot be created (MemoryError from
# asyncio.create_task, the watcher catches and logs it) must be tried again later,
# with the modules waiting on it; a module that is neither running nor due for a
# restart is dead for good while the watcher goes on feeding the watchdog.
# Shared subset: CPython and MicroPython.
from meta1lite import compat
from meta1lite import supervisor as sup

asyncio = compat.asyncio


class _NoRoomOnce:
    """Stands for the asyncio module in supervisor.py: the next create_task fails."""

    def __init__(self, real):
        self.real = real
        self.fail = 0

    def create_task(self, coro):
        if self.fail:
            self.fail -= 1
            coro.close()
            raise MemoryError("memory allocation failed")
        return self.real.create_task(coro)

    def __getattr__(self, name):
        return getattr(self.real, name)


def _quiet(level, module, text):
    pass


async def _settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_restart_that_meets_memory_error_is_tried_again():
    async def go():
        shim = _NoRoomOnce(sup.asyncio)
        saved_asyncio, saved_log = sup.asyncio, compat.log.log
        sup.asyncio, compat.log.log = shim, _quiet
        try:
            s = sup.Supervisor([sup.Module("a", ()), sup.Module("b", ("a",))], 8)
            s.tick = 3600                   # the test drives the watcher (_look)
            s.start()
            await _settle()
            now = compat.real_monotonic()
            assert s.fault("a")
            await _settle()
            s._look(now)                    # a died: restart due in 1 s, b with it
            shim.fail = 1                   # the heap is full at that moment
            try:
                s._look(now + 1)
            except MemoryError:
                pass                        # the watcher logs it and goes on
            for t in (2, 5, 10, 30, 60, 120):
                try:
                    s._look(now + t)
                except MemoryError:
                    pass
            status = s.status()
            await s.stop()
        finally:
            sup.asyncio, compat.log.log = saved_asyncio, saved_log
        assert status["a"]["up"] and status["b"]["up"], status
    asyncio.run(go())


def _no_room_to_log(level, module, text):
    raise MemoryError("memory allocation failed")


def test_the_watcher_outlives_a_memory_error_it_cannot_even_log():
    """The watcher catches a chore's error and logs it; on a full heap the log line
    itself (a formatted string) meets MemoryError inside the except clause, the watcher
    task ends, and with it every later restart and the feeding of the watchdog (without
    watchdog_ms, picow.conf's case, nothing ever notices)."""
    def chore():
        raise MemoryError("memory allocation failed")

    async def go():
        saved = compat.log.log
        s = sup.Supervisor([sup.Module("a", ())], 8)
        s.tick = 0.05
        s.every(0.05, chore)
        compat.log.log = _quiet
        s.start()
        compat.log.log = _no_room_to_log
        try:
            await asyncio.sleep(0.3)
        finally:
            compat.log.log = saved
        alive = not s.watcher.done()
        await s.stop()
        return alive
    alive = [None]

    async def outer():
        alive[0] = await go()
    asyncio.run(outer())
    assert alive[0], "the watcher task ended"

# meta1lite/timeouts.py - compat's timeout half on MicroPython: an await with a
# deadline and no task per call. MicroPython's asyncio.wait_for runs each awaitable
# in a task of its own (a Task, a coroutine and, when it ends, an exception instance
# every call: every socket read of smtps and smtpc); here the waiting task awaits
# itself, and one reaper task cancels it when its deadline passes, with a
# CancelledError of its own that wait() turns into asyncio.TimeoutError. A cancel
# from elsewhere (a plain CancelledError) passes through as a cancel.
# Owns: the list of waits and the reaper task. Must never: cancel a task that is not
# waiting in wait(), or turn a cancel it did not make into a timeout.
# Limits: one cancel reaches a task, so of nested waits whose deadlines pass in the
# same reaper round only the innermost times out; an awaitable that swallows the
# cancel and returns makes wait() return (none of meta1lite's does either).
# Runs on MicroPython; CPython keeps asyncio.timeout (compat.wait_for).
import asyncio
import time

WAITING, FIRED, FIRED_PLAIN = 0, 1, 2   # an entry's state; FIRED_PLAIN: no heap for ours
_MARK = ("deadline passed",)            # the args of the CancelledError the reaper raises
_waits = []             # [deadline in ticks_ms, task, state] of every wait() under way
_reaper = [None, None]  # the reaper task, and the deadline it sleeps until (None: none)


async def wait(awaitable, ms):
    """Await `awaitable` in the calling task; asyncio.TimeoutError after `ms`."""
    entry = [time.ticks_add(time.ticks_ms(), ms), asyncio.current_task(), WAITING]
    try:
        _waits.append(entry)
        _wake(entry[0])
        return await awaitable
    except asyncio.CancelledError as exc:
        if entry[2] == FIRED_PLAIN or (entry[2] == FIRED and exc.args == _MARK):
            raise asyncio.TimeoutError()
        raise
    finally:
        _forget(entry)


def revive():
    """After a board's Ctrl-C: if it landed in the reaper, start another for the waits
    under way (their tasks run on in the stop's asyncio.run)."""
    if _waits and not _reaper_alive():
        _start_reaper()


def _forget(entry):
    for i in range(len(_waits)):
        if _waits[i] is entry:
            del _waits[i]
            return


def _wake(deadline):
    # a reaper if there is none (or it died); an earlier sleep if it would sleep past
    # `deadline`
    reaper, until = _reaper
    if not _reaper_alive():
        _start_reaper()
    elif until is not None and time.ticks_diff(deadline, until) < 0:
        reaper.cancel()


def _reaper_alive():
    return _reaper[0] is not None and not _reaper[0].done()


def _start_reaper():
    _reaper[0], _reaper[1] = asyncio.create_task(_reap()), None


async def _reap():
    try:
        while True:
            soonest = _fire(time.ticks_ms())
            _reaper[1] = soonest
            if soonest is None:     # nothing left to time (fired ones are ending)
                return
            try:
                await asyncio.sleep_ms(max(0, time.ticks_diff(soonest, time.ticks_ms())))
            except (asyncio.CancelledError, MemoryError):
                pass                # _wake: a wait with an earlier deadline began
    finally:
        if _reaper[0] is asyncio.current_task():
            _reaper[0] = _reaper[1] = None


def _fire(now):
    # cancel every task whose deadline passed; the earliest deadline left, or None
    soonest = None
    for i in range(len(_waits)):
        entry = _waits[i]
        if entry[2] != WAITING:
            continue
        if time.ticks_diff(entry[0], now) <= 0:
            entry[2] = _cancel(entry[1])
        elif soonest is None or time.ticks_diff(entry[0], soonest) < 0:
            soonest = entry[0]
    return soonest


def _cancel(task):
    # the innermost task it waits on gets the exception (Task.cancel forwards there)
    inner = task
    while isinstance(inner.data, asyncio.Task):
        inner = inner.data
    data = inner.data
    if data is asyncio.CancelledError or isinstance(data, asyncio.CancelledError):
        return WAITING              # cancelled already, from elsewhere: not a timeout
    task.cancel()
    try:
        inner.data = asyncio.CancelledError(*_MARK)
    except MemoryError:
        return FIRED_PLAIN
    return FIRED

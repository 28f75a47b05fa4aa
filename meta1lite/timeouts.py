# meta1lite/timeouts.py - compat's timeout half on MicroPython: an await with a
# deadline and no task per call. MicroPython's asyncio.wait_for runs each awaitable
# in a task of its own (a Task, a coroutine and, when it ends, an exception instance
# every call: every socket read of smtps and smtpc); here the waiting task awaits
# itself, and one reaper task cancels it when its deadline passes; that cancel comes
# out as asyncio.TimeoutError.
# Owns: the list of waits and the reaper task. Must never: cancel a task that is not
# waiting in wait(), or turn a cancel it did not make into a timeout.
# Runs on MicroPython; CPython keeps asyncio.timeout (compat.wait_for).
import asyncio
import time

_waits = []             # [deadline in ticks_ms, task, fired] of every wait() under way
_reaper = [None, None]  # the reaper task, and the deadline it sleeps until (None: none)


async def wait(awaitable, ms):
    """Await `awaitable` in the calling task; asyncio.TimeoutError after `ms`."""
    entry = [time.ticks_add(time.ticks_ms(), ms), asyncio.current_task(), False]
    _waits.append(entry)
    _wake(entry[0])
    try:
        return await awaitable
    except asyncio.CancelledError:
        if entry[2]:
            raise asyncio.TimeoutError()
        raise
    finally:
        _forget(entry)


def _forget(entry):
    for i in range(len(_waits)):
        if _waits[i] is entry:
            del _waits[i]
            return


def _wake(deadline):
    # a reaper if there is none; an earlier sleep if it would sleep past `deadline`
    reaper, until = _reaper
    if reaper is None:
        _reaper[0] = asyncio.create_task(_reap())
    elif until is not None and time.ticks_diff(deadline, until) < 0:
        reaper.cancel()


async def _reap():
    while True:
        soonest = _fire(time.ticks_ms())
        _reaper[1] = soonest
        if soonest is None:         # nothing left to time (fired ones are ending)
            _reaper[0] = None
            return
        try:
            await asyncio.sleep_ms(max(0, time.ticks_diff(soonest, time.ticks_ms())))
        except asyncio.CancelledError:
            pass                    # _wake: a wait with an earlier deadline began


def _fire(now):
    # cancel every task whose deadline passed; the earliest deadline left, or None
    soonest = None
    for i in range(len(_waits)):
        entry = _waits[i]
        if entry[2]:
            continue
        if time.ticks_diff(entry[0], now) <= 0:
            entry[2] = True
            entry[1].cancel()
        elif soonest is None or time.ticks_diff(entry[0], soonest) < 0:
            soonest = entry[0]
    return soonest

# A spool in a test folder (CPython tests): opened and recovered with room for
# anything, and messages committed chunk by chunk as a session streams them.
import asyncio

from meta1lite.spool import Spool

BIG = 100 * 1024 * 1024


def open_spool(path, **kw):
    """A recovered Spool at path; keyword arguments override the roomy limits."""
    opts = {"max_queue_size": BIG, "max_messages": 100000, "min_free_space": 0}
    opts.update(kw)
    sp = Spool(str(path), **opts)
    sp.recover()
    return sp


async def commit(sp, body, rcpts=("r@x.example",), piece=1000):
    """Queue body (written piece by piece, yielding between) from s@x.example."""
    w = sp.new_message()
    for i in range(0, len(body), piece):
        w.write(body[i:i + piece])
        await asyncio.sleep(0)
    return await sp.commit(w, "s@x.example", list(rcpts))

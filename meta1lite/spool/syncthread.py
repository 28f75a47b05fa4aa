# meta1lite.spool.syncthread - the journal's group sync with its fsyncs in a worker
# thread, so that sessions keep reading and appending while the disk syncs (their
# frames wait for the next round). CPython only: journal.py imports it where
# compat.HAS_THREADS, so its code takes no MicroPython heap.
# Owns: one round's fsyncs and what follows them. Must never: call the round done
# before the fsyncs covering its frames returned, or close a segment that may hold
# frames the round does not cover (one rolled away during the round stays open in
# the journal's _dirty for the next one: see Journal._roll).
from meta1lite import compat, durable


async def sync_round(journal):
    """Journal.sync_now() with the fsyncs in a worker thread (the event loop runs)."""
    from meta1lite.spool.segment import close_quietly
    upto = journal._wseq
    rolled = list(journal._dirty)           # rolled away before: no new frames
    segs = list(rolled)
    cur = journal._cur
    if cur is not None and cur.unsynced:
        cur.unsynced = False
        segs.append(cur)
    try:
        await compat.in_thread(_fsync_segments, segs)
    except BaseException:
        if cur is not None and cur in segs:
            cur.unsynced = True
        raise
    for seg in rolled:
        if seg in journal._dirty:
            close_quietly(seg)
            seg.unsynced = False
            journal._dirty.remove(seg)
    journal._synced = max(journal._synced, upto)


def _fsync_segments(segs):
    # in the worker thread: a file that sync_now() or close() closed meanwhile was
    # synced by them before they closed it
    for seg in segs:
        f = seg.f
        if f is None:
            continue
        try:
            durable.fsync_file(f)
        except (OSError, ValueError):
            if not f.closed:
                raise

# benchmarks/_entry.py - `meta1lite run` for the benchmarks, on either runtime
# (written in the shared subset: it runs under MicroPython from the .mpy bundle too).
#     python benchmarks/_entry.py run -c FILE
#     MICROPYPATH=<bundle>:.frozen micropython benchmarks/_entry.py run -c FILE
# Environment switches (all optional; without them this is exactly `meta1lite run`):
#   META1LITE_BENCH_NO_QMGR=1     the queue manager never delivers: smtps + spool only (accept)
#   META1LITE_BENCH_BACKLOG=N     listen backlog N for the listeners (an experiment)
#   META1LITE_SHIM_TRACE=FILE     tests/helpers/shim_daemon.py's counters on the commit primitives
#   META1LITE_BENCH_PROFILE=FILE  CPython: cProfile the daemon, stats dumped to FILE at stop
import os
import sys


def _dir_of(path):
    return path.rsplit("/", 1)[0] if "/" in path else "."


def _idle_qmgr():
    """The queue manager is built as usual (same modules, same heap) but never
    schedules a delivery: smtps + spool alone are measured."""
    from meta1lite import compat
    from meta1lite.qmgr import manager as qmgr

    class IdleQueueManager(qmgr.QueueManager):
        async def run(self):
            while True:
                await compat.sleep(3600)

        def wake(self):
            pass

    qmgr.QueueManager = IdleQueueManager


def _listen_backlog(n):
    """An experiment: listen() backlog n for smtps (MicroPython's start_server defaults to 5)."""
    from meta1lite import compat
    aio = compat.asyncio
    start_server = aio.start_server

    async def start_server_backlog(cb, host, port, **kw):
        kw["backlog"] = n
        return await start_server(cb, host, port, **kw)
    aio.start_server = start_server_backlog


def main():
    here = _dir_of(sys.argv[0])
    sys.path.append(here + "/../tests")
    try:
        import meta1lite  # noqa: F401
    except ImportError:
        sys.path.append(here + "/..")
    if os.getenv("META1LITE_BENCH_NO_QMGR"):
        _idle_qmgr()
    if os.getenv("META1LITE_BENCH_BACKLOG"):
        _listen_backlog(int(os.getenv("META1LITE_BENCH_BACKLOG")))
    if os.getenv("META1LITE_SHIM_TRACE"):
        from helpers import shim_daemon
        shim_daemon.install()
    from meta1lite import __main__ as entry
    prof_path = os.getenv("META1LITE_BENCH_PROFILE")
    if not prof_path:
        return entry.main()
    import cProfile
    prof = cProfile.Profile()
    prof.enable()
    try:
        return entry.main()
    finally:
        prof.disable()
        prof.dump_stats(prof_path)


if __name__ == "__main__":
    sys.exit(main())

# What mcp's supervisor costs in heap once running (issue 9), under MicroPython:
# the Supervisor with the daemon's four modules (qmgr's task a stand-in loop), two
# chores, its watcher and the module tasks. Prints figures, asserts nothing.
#   .venv/bin/python firmware/build_bundle.py
#   MICROPYPATH=firmware/build/bundle:.frozen .venv/bin/micropython -X heapsize=512K benchmarks/_upy_supervisor_heap.py
# (on the unix port the import line includes the bytecode, which a board keeps in flash)
import asyncio
import gc


def used():
    gc.collect()
    return gc.mem_alloc()


async def loop():
    while True:
        await asyncio.sleep(3600)


async def measure(sup):
    before = used()
    mods = [sup.Module("smar", (), None, lambda: None), sup.Module("smtpc", (), None, lambda: None),
            sup.Module("qmgr", ("smar", "smtpc"), loop, lambda: None),
            sup.Module("smtps", ("smar", "qmgr"), None, lambda: None)]
    s = sup.Supervisor(mods, 60)
    s.every(5, lambda: None)
    s.every(600, lambda: None)
    s.start()
    await asyncio.sleep(0.05)
    running = used() - before
    await s.stop()
    return running


def main():
    base = used()
    from meta1lite import compat
    compat.log.log = lambda *args: None
    with_compat = used()
    from meta1lite import supervisor
    imported = used()
    running = asyncio.run(measure(supervisor))
    print("import supervisor.py (compat already imported): %d bytes; compat: %d bytes"
          % (imported - with_compat, with_compat - base))
    print("supervisor running (4 modules, 5 tasks, 2 chores): %d bytes" % running)


main()

# benchmarks/_upy_heap_driver.py - runs UNDER MicroPython (shared subset, no f-strings),
# driven by benchmarks/heap.py:
#   micropython -X heapsize=H _upy_heap_driver.py import MOD [MOD ...]
#       imports the modules in order; prints "IMPORT mod delta cumulative" (gc.mem_alloc
#       after gc.collect(), bytes)
#   micropython -X heapsize=H _upy_heap_driver.py serve CONF CTRLPORT INTERVAL_MS
#       starts meta1lite.mcp.Daemon in-process (as `meta1lite run` does), prints
#       "START alloc free" (after gc.collect(), relative to the driver's own baseline),
#       samples the heap every INTERVAL_MS in a background task, and answers on a
#       loopback control port, one line per command:
#         "PEAK"  -> "PEAK live_max alloc_max free_min samples", then resets the maxima
#         "STOP"  -> stops the daemon and exits
#       live_max = max of gc.mem_alloc() right after gc.collect() (live data);
#       alloc_max = max of gc.mem_alloc() without collecting (live + garbage not yet collected).
import gc
import sys

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio


def used():
    gc.collect()
    return gc.mem_alloc()


def do_imports(names):
    base = used()
    prev = base
    for name in names:
        __import__(name)
        now = used()
        print("IMPORT %s %d %d" % (name, now - prev, now - base))
        prev = now


class Sampler:
    def __init__(self, base):
        self.base = base
        self.reset()

    def reset(self):
        self.live = 0
        self.alloc = 0
        self.free = 1 << 30
        self.n = 0

    def sample(self):
        a = gc.mem_alloc()
        if a > self.alloc:
            self.alloc = a
        gc.collect()
        a = gc.mem_alloc()
        if a > self.live:
            self.live = a
        f = gc.mem_free()
        if f < self.free:
            self.free = f
        self.n += 1

    def report(self):
        return "PEAK %d %d %d %d" % (self.live - self.base, self.alloc - self.base, self.free, self.n)


async def serve(conf_path, ctrl_port, interval_ms):
    base = used()
    from meta1lite import conf, heap
    cfg = conf.load(conf_path)
    modules = conf.MODULES
    del conf
    heap.forget_modules(modules)        # as __main__ does
    from meta1lite import mcp
    daemon = mcp.Daemon(cfg)
    await daemon.start()
    now = used()
    print("START %d %d %d" % (now - base, gc.mem_free(), base))
    sampler = Sampler(base)
    done = asyncio.Event()

    async def sampling():
        while not done.is_set():
            sampler.sample()
            await asyncio.sleep_ms(interval_ms)

    async def control(reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = line.strip()
            if cmd == b"PEAK":
                sampler.sample()
                writer.write((sampler.report() + "\n").encode())
                sampler.reset()
            elif cmd == b"STOP":
                writer.write(b"BYE\n")
                done.set()
            await writer.drain()
            if done.is_set():
                break
        writer.close()

    task = asyncio.create_task(sampling())
    server = await asyncio.start_server(control, "127.0.0.1", ctrl_port)
    print("READY")
    await done.wait()
    task.cancel()
    server.close()
    await daemon.stop()


def main():
    mode = sys.argv[1]
    if mode == "import":
        do_imports(sys.argv[2:])
    elif mode == "serve":
        asyncio.run(serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))


main()

# meta1lite.qmgr.control - the daemon's control channel for the queue tools.
#
# Owns: a small server on cfg["control"] (a unix socket path, or a loopback
# (host, port) where there are no unix sockets) that takes one-line requests
#   flush | hold ID | release ID | delete ID | status | ping
#   reload | stop | fault MODULE      (mcp's, handed to mcp.Daemon.request)
#   inject ENVELOPE_BYTES BODY_BYTES   (followed by that many bytes: a JSON
#       envelope {"from", "rcpt", "uid"} and the message; `meta1lite sendmail`)
# and answers each with one line of JSON ({"ok": true, ...} or {"ok": false,
# "error": "..."}; an inject that may succeed later adds "temporary": true).
# The handlers (qmgr/requests.py: Control, one connection's requests, their limits)
# are imported and the daemon's Control built at the first request: a board whose
# console is never asked keeps them out of its heap (0.6K).
# Must never: listen on anything but loopback or a socket file, or block the event
# loop (what the requests must never do: requests.py).
# Shared code: MicroPython and CPython.
from meta1lite import compat, durable, heap, listener, streams
from meta1lite.const import const

asyncio = compat.asyncio
HEAP_SAMPLE_MS = const(250)     # how often the heap high-water is sampled (MicroPython)
LOG = const("control")


class LineReader:
    """Bounded line reader over a stream: one preallocated buffer, lines split here."""

    def __init__(self, reader, max_line=1024):
        self.reader = reader
        self.max_line = max_line
        self.buf = streams.new_read_buffer(max_line)
        self.pending = b""

    async def readline(self):
        """Next line with its ending; b'' at EOF; raises ValueError if over max_line."""
        while True:
            nl = self.pending.find(b"\n")
            if nl >= 0:
                line, self.pending = self.pending[:nl + 1], self.pending[nl + 1:]
                return line
            if len(self.pending) >= self.max_line:
                raise ValueError("line longer than %d octets" % self.max_line)
            data = await streams.read_some(self.reader, self.buf)
            if not data:
                line, self.pending = self.pending, b""
                return line
            self.pending += data


class HeapWatch:
    """The highest heap in use (gc.mem_alloc, garbage not yet collected included) seen
    by the daemon: sampled every HEAP_SAMPLE_MS and on each status request. Sampling
    allocates nothing (small ints). On CPython (no heap figures) it stays None."""

    def __init__(self):
        self.high = None

    def sample(self):
        used = heap.heap_used()
        if used is not None and (self.high is None or used > self.high):
            self.high = used

    async def run(self):
        sleep_ms = getattr(asyncio, "sleep_ms", None)   # MicroPython: no float per tick
        while True:
            self.sample()
            if sleep_ms is not None:
                await sleep_ms(HEAP_SAMPLE_MS)
            else:
                await asyncio.sleep(HEAP_SAMPLE_MS / 1000)


heap_watch = HeapWatch()


def describe(endpoint):
    """The control endpoint as text ('path' or 'host:port')."""
    if isinstance(endpoint, (tuple, list)):
        return "%s:%d" % (endpoint[0], endpoint[1])
    return str(endpoint)


class ControlServer:
    """The listening control channel; close() stops it (and removes a socket file)."""

    def __init__(self, server, endpoint, sampler=None):
        self.server = server
        self.endpoint = endpoint
        self.sampler = sampler

    def close(self):
        del _local[:]
        if self.sampler is not None:
            self.sampler.cancel()
            self.sampler = None
        if self.server is not None:
            self.server.close()
        if isinstance(self.endpoint, str):
            durable.remove(self.endpoint)

    async def wait_closed(self):
        if self.server is not None:
            await self.server.wait_closed()


_local = []     # the running daemon's Control (its arguments until the first request)


def ask(line):
    """The running daemon's reply (dict) to one request line, asked in-process: a
    board's console, which cannot reach the control channel's socket (lwIP has no
    loopback interface: a connect to 127.0.0.1 fails with EHOSTUNREACH)."""
    if not _local:
        return {"ok": False, "error": "the relay is not running"}
    return _control().handle(line)


def _control():
    # the daemon's Control, built at the first request
    from meta1lite.qmgr.requests import Control
    if isinstance(_local[0], tuple):
        _local[0] = Control(*_local[0])
    return _local[0]


async def start_control(cfg, spool, qmgr, mcp=None):
    """Start the control channel on cfg["control"]; returns a ControlServer (its
    .server is None when this runtime cannot listen on a socket path). mcp: the
    daemon answering reload, stop and fault. ask() reaches it from now on, socket
    or not."""
    _local[:] = [(spool, qmgr, cfg, mcp, compat.monotonic())]
    endpoint = cfg.get("control")

    async def handler(reader, writer):
        if not _local:                  # the daemon stopped while this one connected
            await streams.close_stream(writer)
            return
        from meta1lite.qmgr.requests import serve
        await serve(_control(), reader, writer)

    if isinstance(endpoint, (tuple, list)):
        # listener's accept loop: asyncio's own ends for good at a MemoryError
        server = await listener.start_server(handler, endpoint[0], endpoint[1], 5)
    else:
        server = await compat.start_unix_server(handler, endpoint)
    if server is None:
        compat.log.log("warning", LOG, "this runtime has no unix socket server: no control "
                       "channel for the queue tools (on a router: control = 127.0.0.1:PORT; "
                       "a board's console reaches the relay without one)")
        return ControlServer(None, None, _start_sampler())   # status' heap high-water
    compat.log.log("info", LOG, "control channel on %s" % describe(endpoint))
    return ControlServer(server, endpoint, _start_sampler())


def _start_sampler():
    """The heap high-water task (MicroPython only: CPython has no GC heap figures)."""
    if heap.heap_used() is None:
        return None
    return asyncio.create_task(heap_watch.run())

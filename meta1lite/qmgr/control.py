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
# Must never: answer an inject before the spool's commit (the journal's sync),
# listen on anything but loopback or a socket file, accept a request line longer
# than MAX_REQUEST, or block the event loop (every request is a quick call on the
# spool or the queue manager; an inject streams its body in like an SMTP DATA).
# Shared code: MicroPython and CPython.
import gc
import json

from meta1lite import compat, durable, heap, listener
from meta1lite.proto import address
from meta1lite.spool import TOO_BIG, SpoolFull

asyncio = compat.asyncio
MAX_REQUEST = 512               # bytes of one request line
MAX_REQUESTS = 100              # requests per connection
IO_TIMEOUT_S = 30               # idle connection (simulated seconds)
LOG_LINES = 10                  # recent log lines in a status reply
HEAP_SAMPLE_MS = 250            # how often the heap high-water is sampled (MicroPython)
LOG = "control"
MCP_VERBS = ("reload", "stop", "fault")     # requests mcp answers
LOG_PICKUP = "sendmail"         # logs as Postfix's pickup (pflogsumm: received)
MAX_ENVELOPE = 64 * 1024        # bytes of an inject's JSON envelope


class LineReader:
    """Bounded line reader over a stream: one preallocated buffer, lines split here."""

    def __init__(self, reader, max_line=1024):
        self.reader = reader
        self.max_line = max_line
        self.buf = compat.new_read_buffer(max_line)
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
            data = await compat.read_some(self.reader, self.buf)
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


class Control:
    """The request handlers: one line in, one dict out."""

    def __init__(self, spool, qmgr, cfg=None, mcp=None):
        self.spool = spool
        self.qmgr = qmgr
        self.cfg = cfg or {}
        self.mcp = mcp
        self.started = compat.monotonic()

    def handle(self, line):
        """The reply (dict) to one request line (str)."""
        words = line.split()
        if not words:
            return {"ok": False, "error": "empty request"}
        verb, args = words[0].lower(), words[1:]
        if verb == "ping":
            return {"ok": True}
        if verb == "status":
            return self.status()
        if verb == "flush":
            return self.flush()
        if verb in ("hold", "release", "delete"):
            if len(args) != 1:
                return {"ok": False, "error": "usage: %s QUEUEID" % verb}
            return self.change(verb, args[0])
        if verb in MCP_VERBS and self.mcp is not None:
            return self.mcp.request(verb, args)
        return {"ok": False, "error": "unknown request %r" % verb[:40]}

    def flush(self):
        if self.qmgr is None:
            return {"ok": False, "error": "no queue manager in this daemon"}
        n = self.qmgr.flush()
        compat.log.log("info", LOG, "flush requested: %d deferred messages due now" % n)
        return {"ok": True, "flushed": n}

    def _envelope(self, data):
        env = json.loads(data)
        sender, rcpts, uid = env.get("from"), env.get("rcpt"), env.get("uid", 0)
        limit = self.cfg.get("smtps", {}).get("max_recipients", 100)
        if not isinstance(sender, str) or not isinstance(rcpts, list) or not rcpts \
                or len(rcpts) > limit or not isinstance(uid, int):
            raise ValueError("bad envelope")
        if sender:
            address.parse_path(("<%s>" % sender).encode(), sender=True, smtputf8=True)
        for rcpt in rcpts:
            if not isinstance(rcpt, str):
                raise ValueError("bad recipient")
            address.parse_path(("<%s>" % rcpt).encode(), smtputf8=True)
        return sender, rcpts, uid

    async def inject(self, lines, args):
        """`inject ENV BODY`: read the envelope and the body, commit them to the
        spool; (the reply, keep the connection) once the message is durable."""
        try:
            env_len, body_len = int(args[0]), int(args[1])
        except (IndexError, ValueError):
            return {"ok": False, "error": "usage: inject ENVELOPE_BYTES BODY_BYTES"}, False
        if not 0 < env_len <= MAX_ENVELOPE or body_len < 0:
            return {"ok": False, "error": "bad inject sizes"}, False
        parts = []
        await _read_into(lines, env_len, lambda piece: parts.append(bytes(piece)))
        try:
            sender, rcpts, uid = self._envelope(b"".join(parts).decode("utf-8"))
        except (ValueError, TypeError, AttributeError, UnicodeError, address.AddressError) as exc:
            return {"ok": False, "error": "bad envelope: %s" % exc}, False
        reason, temporary = self._refusal(body_len)
        if reason:
            await _read_into(lines, body_len, None)
            return {"ok": False, "error": reason, "temporary": temporary}, True
        try:
            queue_id = await self._commit(lines, body_len, sender, rcpts)
        except (SpoolFull, OSError) as exc:
            return {"ok": False, "error": "%s" % exc, "temporary": True}, False
        compat.log.log("info", LOG_PICKUP, "%s: uid=%d from=<%s>" % (queue_id, uid, sender))
        if self.qmgr is not None:
            self.qmgr.wake(queue_id)
        return {"ok": True, "queue_id": queue_id}, True

    def _refusal(self, size):
        # (why a message of size bytes is refused, or None; whether it may pass later)
        limit = self.cfg.get("smtps", {}).get("max_message_size")
        if limit and size > limit:
            return "message size %d exceeds max_message_size %d" % (size, limit), False
        if heap.memory_low():
            return "out of memory, try again later", True
        reason = self.spool.check_accept(size)
        return reason, reason != TOO_BIG

    async def _commit(self, lines, body_len, sender, rcpts):
        writer = self.spool.new_message()
        try:
            await _read_into(lines, body_len, writer.write)
            return await self.spool.commit(writer, sender, rcpts,
                                           {"client": "local", "proto": "sendmail"})
        except BaseException:
            writer.abort()          # idempotent; nothing of it will load
            raise

    def change(self, verb, queue_id):
        done = getattr(self.spool, verb)(queue_id)
        if not done:
            return {"ok": False, "error": "%s: no such message in the queue" % queue_id}
        if verb == "release" and self.qmgr is not None:
            self.qmgr.release(queue_id)
        elif self.qmgr is not None:
            self.qmgr.wake()
        return {"ok": True, "queue_id": queue_id}

    def status(self):
        heap_watch.sample()     # before collecting: what is allocated right now
        gc.collect()            # the heap figure counts live data, not garbage
        reply = {"ok": True, "running": True, "pid": compat.getpid(),
                 "uptime": int(compat.monotonic() - self.started),
                 "heap": heap.heap_used(), "heap_free": heap.heap_free(),
                 "heap_high_water": heap_watch.high, "log": compat.log.ring.lines(LOG_LINES)}
        if self.qmgr is not None:
            reply.update(self.qmgr.status())
        else:
            reply["messages"] = self.spool.count()
        if self.mcp is not None:
            reply.update(self.mcp.status())
        return reply


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


async def _read_into(lines, n, sink):
    """n bytes after the request line (what LineReader already holds first) to
    sink(view, valid during the call), or dropped (sink None); ValueError if the
    stream ends early."""
    while n > 0:
        data = lines.pending
        if not len(data):           # read_some's view: reused by the next read
            data = await compat.wait_for(compat.read_some(lines.reader, lines.buf), IO_TIMEOUT_S)
            if not len(data):
                raise ValueError("the request ended early")
        view = memoryview(data)
        if sink is not None:
            sink(view[:n])          # a view: the sink copies what it keeps
        rest = view[n:]
        n -= len(view) - len(rest)
        lines.pending = bytes(rest) if len(rest) else b""   # LineReader's (find)


async def _serve(control, reader, writer):
    lines = LineReader(reader, MAX_REQUEST)
    try:
        for _ in range(MAX_REQUESTS):
            raw = await compat.wait_for(lines.readline(), IO_TIMEOUT_S)
            if not raw:
                break
            text, keep = raw.decode("utf-8", "replace").strip(), True
            try:
                if text.startswith("inject "):
                    reply, keep = await control.inject(lines, text.split()[1:])
                else:
                    reply = control.handle(text)
            except Exception as exc:  # noqa: BLE001 - a bad request must not kill the daemon
                reply, keep = {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}, False
            await compat.write_all(writer, (json.dumps(reply) + "\n").encode())
            if not keep:
                break
    except Exception as exc:  # noqa: BLE001 - a peer gone, a timeout, a long line
        if not (compat.is_timeout(exc) or compat.is_connection_error(exc) or isinstance(exc, ValueError)):
            compat.log.log("warning", LOG, "request failed: %r" % (exc,))
    finally:
        await compat.close_stream(writer)


_local = []     # the running daemon's Control, for ask()


def ask(line):
    """The running daemon's reply (dict) to one request line, asked in-process: a
    board's console, which cannot reach the control channel's socket (lwIP has no
    loopback interface: a connect to 127.0.0.1 fails with EHOSTUNREACH)."""
    if not _local:
        return {"ok": False, "error": "the relay is not running"}
    return _local[0].handle(line)


async def start_control(cfg, spool, qmgr, mcp=None):
    """Start the control channel on cfg["control"]; returns a ControlServer (its
    .server is None when this runtime cannot listen on a socket path). mcp: the
    daemon answering reload, stop and fault. ask() reaches it from now on, socket
    or not."""
    control = Control(spool, qmgr, cfg, mcp)
    _local[:] = [control]
    endpoint = cfg.get("control")

    def handler(reader, writer):
        return _serve(control, reader, writer)

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

# meta1lite.qmgr.requests - the control channel's request handlers (qmgr/control.py
# has the channel): Control, which answers one request line with one dict, and the
# serving of one connection (its requests, an inject's bytes).
#
# Owns: what each request of control.py's header does (flush, hold, release, delete,
# status, ping; reload, stop and fault handed to mcp; inject). Must never: answer an
# inject before the spool's commit, accept a request line longer than _MAX_REQUEST,
# or block the event loop. Imported at the first request, not at start: a board
# that is never asked keeps it out of its heap.
# Shared code: MicroPython and CPython.
import gc
import json

from meta1lite import compat, heap, streams
from meta1lite.const import const
from meta1lite.proto import address
from meta1lite.qmgr.control import LOG, LineReader, heap_watch
from meta1lite.spool import TOO_BIG, SpoolFull

_MAX_REQUEST = const(512)       # bytes of one request line
_MAX_REQUESTS = const(100)      # requests per connection
_IO_TIMEOUT_S = const(30)       # idle connection (simulated seconds)
LOG_LINES = const(10)           # recent log lines in a status reply
MCP_VERBS = ("reload", "stop", "fault")     # requests mcp answers
LOG_PICKUP = const("sendmail")  # logs as Postfix's pickup (pflogsumm: received)
_MAX_ENVELOPE = const(64 * 1024)  # bytes of an inject's JSON envelope


class Control:
    """The request handlers: one line in, one dict out."""

    def __init__(self, spool, qmgr, cfg=None, mcp=None, started=None):
        self.spool = spool
        self.qmgr = qmgr
        self.cfg = cfg or {}
        self.mcp = mcp
        self.started = compat.monotonic() if started is None else started

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
        if not 0 < env_len <= _MAX_ENVELOPE or body_len < 0:
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


async def _read_into(lines, n, sink):
    """n bytes after the request line (what LineReader already holds first) to
    sink(view, valid during the call), or dropped (sink None); ValueError if the
    stream ends early."""
    while n > 0:
        data = lines.pending
        if not len(data):           # read_some's view: reused by the next read
            data = await compat.wait_for(streams.read_some(lines.reader, lines.buf), _IO_TIMEOUT_S)
            if not len(data):
                raise ValueError("the request ended early")
        view = memoryview(data)
        if sink is not None:
            sink(view[:n])          # a view: the sink copies what it keeps
        rest = view[n:]
        n -= len(view) - len(rest)
        lines.pending = bytes(rest) if len(rest) else b""   # LineReader's (find)


async def serve(control, reader, writer):
    """Answer one control connection's requests (at most _MAX_REQUESTS), then close it."""
    lines = LineReader(reader, _MAX_REQUEST)
    try:
        for _ in range(_MAX_REQUESTS):
            raw = await compat.wait_for(lines.readline(), _IO_TIMEOUT_S)
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
            await streams.write_all(writer, (json.dumps(reply) + "\n").encode())
            if not keep:
                break
    except Exception as exc:  # noqa: BLE001 - a peer gone, a timeout, a long line
        if not (compat.is_timeout(exc) or compat.is_connection_error(exc) or isinstance(exc, ValueError)):
            compat.log.log("warning", LOG, "request failed: %r" % (exc,))
    finally:
        await streams.close_stream(writer)

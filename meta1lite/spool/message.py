# meta1lite.spool.message - what one queued message looks like to callers: the
# Message and Recipient objects handed out (built on demand, see index.py), the
# envelope record they are read from and written as, the body writer
# (MessageWriter), the spool's errors and its log line.
#
# Owns: the envelope record <-> Message conversion, and streaming a body into chunk
# frames. Must never: hold a body beyond one chunk buffer, or write to disk except
# through the Spool (MessageWriter -> Spool._write_chunk -> the journal).
# Shared code: MicroPython and CPython.
from meta1lite import compat
from meta1lite.const import const
from meta1lite.status import QUEUED

LOG = const("spool")


def log(level, text):
    """One log line of the spool."""
    compat.log.log(level, LOG, text)


class SpoolFull(Exception):
    """Refused for space or count limits (the caller answers 452 4.3.1)."""

    @property
    def reason(self):
        """The refusal reason (for the 452 4.3.1 reply text)."""
        return self.args[0] if self.args else "queue full"


class CorruptMessage(Exception):
    """A queued message's body could not be read back completely."""


def full_if_no_space(exc):
    """SpoolFull for an OSError that means the file system is full, else exc."""
    return SpoolFull("no space left on device") if compat.is_no_space(exc) else exc


class Recipient:
    """One recipient of a queued message and its delivery state (a snapshot)."""

    def __init__(self, addr, status=QUEUED):
        self.addr = addr
        self.status = status
        self.reply = None
        self.attempts = 0
        self.next_try = None
        self.seg = 0            # segment key of the newest state record (0: none)
        self.pos = 0            # its offset there


class Message:
    """A queued message as read back from the spool, never the body.

    Spool.get() and Spool.messages() build a FRESH Message from the compact index and
    the records on disk each time: changing its attributes changes nothing in the
    queue (use record_attempt/hold/release/delete), and two calls return two objects."""

    def __init__(self, queue_id, tag, sender, recipients, arrival, size, info):
        self.id = queue_id
        self.tag = tag
        self.sender = sender
        self.recipients = recipients
        self.arrival = arrival
        self.size = size
        self.info = info
        self.held = False
        self.nchunks = 0
        self.segs = []          # segment keys holding the chunks, in order
        self.first = 0          # offset of chunk 0 in segs[0]
        self.env_seg = 0        # segment key of the envelope
        self.env_pos = 0        # offset of the envelope frame
        self.env_end = 0        # end offset of the envelope frame
        self.ctl_seg = 0        # segment of the newest hold/release record


def arriving(queue_id, tag, sender, recipients, size, info, nchunks, segs, first):
    """A Message arriving now: every recipient queued, its chunks nchunks frames
    in the segments segs (keys, in order), chunk 0 at offset first of segs[0]."""
    msg = Message(queue_id, tag, sender, [Recipient(a) for a in recipients],
                  int(compat.wall_time()), size, info)
    msg.nchunks, msg.segs, msg.first = nchunks, segs, first
    return msg


def envelope_record(msg):
    """The envelope record's fields of a Message (its chunks' segment keys relative
    to the envelope's own segment: 0 = the same file)."""
    segs = [0 if key == msg.env_seg else key for key in msg.segs]
    return {"id": msg.id, "from": msg.sender, "rcpt": [r.addr for r in msg.recipients],
            "st": [r.status for r in msg.recipients], "t": msg.arrival, "size": msg.size,
            "chunks": msg.nchunks, "segs": segs, "off": msg.first, "info": msg.info}


def message_from_envelope(rec, tag, key):
    """A Message from an envelope record read in the segment of that key, or None
    if malformed."""
    try:
        rcpts = [Recipient(str(a), str(s)) for a, s in zip(rec["rcpt"], rec["st"])]
        msg = Message(str(rec["id"]), tag, str(rec["from"]), rcpts, rec["t"],
                      int(rec["size"]), rec.get("info"))
        msg.nchunks = int(rec["chunks"])
        msg.segs = [key if s == 0 else s for s in rec["segs"]]
        msg.first = int(rec["off"])
    except (KeyError, TypeError, ValueError):
        return None
    return msg


class BufferPool:
    """Chunk-sized bytearrays reused from message to message: a board's fragmented
    heap may have no hole left for a new 1K buffer. At most `keep` are kept free."""

    def __init__(self, size, keep):
        self.size = size
        self.keep = keep
        self.free = []

    def take(self):
        """A buffer of self.size bytes (contents undefined)."""
        return self.free.pop() if self.free else bytearray(self.size)

    def give(self, buf):
        """Return a buffer taken with take() (None is ignored)."""
        if buf is not None and len(self.free) < self.keep:
            self.free.append(buf)


class MessageWriter:
    """Streams one message's body into the journal, chunk by chunk."""

    def __init__(self, spool, queue_id, tag, chunk_size):
        self.queue_id = queue_id
        self.tag = tag
        self.size = 0
        self.error = None       # SpoolFull or OSError once writing failed
        self.nchunks = 0
        self.segs = []
        self.first = None
        self.flushed = 0        # bytes already in chunk frames
        self._spool = spool
        self.closed = False     # committed, aborted or failed
        self._chunk_size = chunk_size
        self._buf = None        # allocated at the first write
        self._fill = 0

    def write(self, data):
        """Append body bytes; full chunks go to the journal. Never raises for limits:
        a failure is kept in .error and raised by commit()."""
        if self.error is not None or self.closed:
            return
        if self._buf is None:
            self._buf = self._spool.buffers.take()
        mv = memoryview(data)
        self.size += len(mv)
        while len(mv) and self.error is None:
            take = min(len(self._buf) - self._fill, len(mv))
            memoryview(self._buf)[self._fill:self._fill + take] = mv[:take]
            self._fill += take
            mv = mv[take:]
            if self._fill == len(self._buf):
                self.flush()

    def flush(self):
        """Write the buffered bytes as a chunk frame now."""
        if not self._fill or self.error is not None:
            return
        try:
            self._spool._write_chunk(self, memoryview(self._buf)[:self._fill])
        except SpoolFull as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(full_if_no_space(exc))
        self._fill = 0

    def _fail(self, exc):
        self.error = exc
        self._spool._drop_writer(self)

    def abort(self):
        """Give up this message: nothing of it will ever be loaded."""
        self._spool._drop_writer(self)

# meta1lite.spoolidx - the spool's in-memory pieces: the Message and Recipient
# objects handed out (built on demand, see spoolindex.py), the body writer
# (MessageWriter), segment bookkeeping, errors.
#
# Owns: what one queued message or one segment looks like to callers, and streaming a
# body into chunk frames. Must never: hold a body beyond one chunk buffer, or write
# to disk except through the Spool's journal (MessageWriter -> Spool._write_chunk).
# Shared code: MicroPython and CPython.
from meta1lite import compat

STATUSES = ("queued", "deferred", "sent", "bounced")
FINAL = ("sent", "bounced")


class SpoolFull(Exception):
    """Refused for space or count limits (the caller answers 452 4.3.1)."""

    @property
    def reason(self):
        """The refusal reason (for the 452 4.3.1 reply text)."""
        return self.args[0] if self.args else "queue full"


class CorruptMessage(Exception):
    """A queued message's body could not be read back completely."""


class Recipient:
    """One recipient of a queued message and its delivery state (a snapshot)."""

    def __init__(self, addr, status="queued"):
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

    def done(self):
        """True when every recipient has a final status."""
        for rcpt in self.recipients:
            if rcpt.status not in FINAL:
                return False
        return True


class Segment:
    """One segment file: a journal segment (key = its number > 0) or an incoming
    file (key < 0, numbered as adopted)."""

    def __init__(self, key, path, gen, seq, kind):
        self.key = key
        self.path = path
        self.gen = gen
        self.seq = seq
        self.kind = kind        # "j" journal | "i" incoming
        self.start = 0          # end of the header frame
        self.end = 0            # end of valid data = append position
        self.refs = 0           # live messages and open writers with needed frames here
        self.needs = {}         # key -> seq of segments that must be freed first
        self.skips = {}         # damaged regions found at replay: start -> stop
        self.f = None           # open r+b handle while current or unsynced
        self.unsynced = False


def write_all(f, data):
    """Write all of data to an unbuffered file (loops over short writes)."""
    mv = memoryview(data)
    while len(mv):
        n = f.write(mv)
        if not n:
            raise OSError(5, "short write")
        mv = mv[n:]


def open_rw(path):
    """Open an existing file for in-place writes, unbuffered where possible."""
    try:
        return open(path, "r+b", buffering=0)
    except TypeError:
        return open(path, "r+b")


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
            self._buf = bytearray(self._chunk_size)
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
            self._fail(SpoolFull("no space left on device") if compat.is_no_space(exc) else exc)
        self._fill = 0

    def _fail(self, exc):
        self.error = exc
        self._spool._drop_writer(self)

    def abort(self):
        """Give up this message: nothing of it will ever be loaded."""
        self._spool._drop_writer(self)

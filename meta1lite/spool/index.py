# meta1lite.spool.index - the spool's compact in-memory index of queued messages,
# and the Message objects built from it and the records on disk on demand.
#
# Owns: one packed record per queued message (layout below), the records kept end
# to end in BUCKETS bytearrays chosen by tag (no object, no dict entry per message,
# and no single big block a board could not find), the bytes of live messages, the
# oldest-first listing, and reading a message's envelope and newest state records
# back (through the journal). Must never: keep a sender, address, reply or info map
# in RAM for a queued message; hand out a record (callers get fresh Message copies);
# use a record's handle (bucket bytearray, offset) after any record was removed
# (offsets shift) or across an await. Shared code: MicroPython and CPython.
#
# Record (big-endian), by offset:
#    0 arrival (u32 wall seconds)   4 queue ID time part (u32)   8 tag (u32)
#   12 envelope segment key (i32)  16 envelope frame offset (u32)  20 size (u32)
#   24 flags (u8, 1 = held)  25 segment of the newest hold record (i32, 0 = none)
#   29 number of chunk segments N (u16)  31 number of recipients M (u16)
#   33 N x chunk segment key (i32; 0 = a segment that did not exist at loading)
#   then M x (status index u8, attempts u16, state segment key i32, state offset u32)
#   A recipient's newest state record is read from (segment, offset) for its reply
#   and next try; 0 = none yet. Segment keys: journal numbers > 0, incoming < 0.
#   The status index is the position in meta1lite.status.STATUSES.
import struct

from meta1lite import compat
from meta1lite.const import const
from meta1lite.spool import format as fmt
from meta1lite.spool.message import log, message_from_envelope
from meta1lite.status import STATUSES

_HEAD = const(">IIIiIIBiHH")    # the fields above up to M; head() returns them
_HEAD_LEN = const(33)
# positions in head() (and in ">III", the first three): h[TAG], never h[2]
ARRIVAL, ID_TIME, TAG, ENV_SEG, ENV_POS, SIZE, FLAGS, HOLD_SEG, NSEGS, NRCPT = range(10)
_FLAGS_AT = const(24)           # offset of flags (u8; flags & 1: held) and the hold segment (i32): ">Bi"
_COUNTS_AT = const(29)          # offset of N and M: ">HH"
RCPT = ">BHiI"                  # status index, attempts, state segment, state offset
_RCPT_LEN = const(11)
# buckets of records (chosen by tag): a lookup scans one. A board's 64 keep the empty
# ones' list small; CPython's queue of thousands gets more, shorter buckets.
BUCKETS = 64 if compat.MICROPYTHON else 1024


def _u32(value):
    try:
        return max(0, min(int(value), 0xFFFFFFFF))
    except (TypeError, ValueError):
        return 0


def status_code(status, code):
    """The index of status in STATUSES (as stored), or code if it is unknown."""
    return STATUSES.index(status) if status in STATUSES else code


def pack(msg, segs):
    """The record (bytearray) of a Message; segs: the spool's segments by key."""
    keys = [key if key in segs else 0 for key in msg.segs]
    rcpts = msg.recipients
    if len(keys) > 0xFFFF or len(rcpts) > 0xFFFF:
        raise ValueError("envelope too large")
    rec = bytearray(_HEAD_LEN + 4 * len(keys) + _RCPT_LEN * len(rcpts))
    struct.pack_into(_HEAD, rec, 0, _u32(msg.arrival), fmt.id_time_of(msg.id) or 0, msg.tag,
                     msg.env_seg, msg.env_pos, _u32(msg.size), 1 if msg.held else 0,
                     msg.ctl_seg or 0, len(keys), len(rcpts))
    at = _HEAD_LEN
    for key in keys:
        struct.pack_into(">i", rec, at, key)
        at += 4
    for r in rcpts:
        struct.pack_into(RCPT, rec, at, status_code(r.status, 0), min(r.attempts, 0xFFFF),
                         r.seg, r.pos)
        at += _RCPT_LEN
    return rec


def head(buf, off):
    """(arrival, id time, tag, env seg, env offset, size, flags, hold seg, N, M):
    read them as h[ARRIVAL], h[TAG], ..."""
    return struct.unpack_from(_HEAD, buf, off)


def rec_len(buf, off):
    nsegs, nrcpt = struct.unpack_from(">HH", buf, off + _COUNTS_AT)
    return _HEAD_LEN + 4 * nsegs + _RCPT_LEN * nrcpt


def rcpt_at(buf, off, index):
    """Offset of recipient index's slot (RCPT: status, attempts, state seg, offset)."""
    return off + _HEAD_LEN + 4 * struct.unpack_from(">H", buf, off + _COUNTS_AT)[0] + _RCPT_LEN * index


def needed(buf, off):
    """Distinct keys of the segments whose frames this message needs."""
    h = head(buf, off)
    keys = [h[ENV_SEG], h[HOLD_SEG]]
    at = off + _HEAD_LEN
    for _ in range(h[NSEGS]):
        keys.append(struct.unpack_from(">i", buf, at)[0])
        at += 4
    for _ in range(h[NRCPT]):
        keys.append(struct.unpack_from(">i", buf, at + 3)[0])     # the state segment
        at += _RCPT_LEN
    out = []
    for key in keys:
        if key and key not in out:
            out.append(key)
    return out


_NO_ID = object()       # equal to nothing find_id() is asked for


class Index:
    """The live messages' records, end to end in BUCKETS bytearrays chosen by tag;
    used[i] bytes of bucket i are records, the rest is room to grow. journal: the
    spool's Journal (segment reference counts, reading records back)."""

    def __init__(self, journal=None):
        self.journal = journal
        self.buckets = [b""] * BUCKETS
        self.used = [0] * BUCKETS
        self.count = 0
        self.live_bytes = 0     # sum of the live messages' sizes
        self.last_id = _NO_ID   # the last queue ID find_id() checked, its tag and time
        self.last_tag = self.last_time = 0

    # --- the packed records ----------------------------------------------------------

    def find(self, tag, id_time=None, arrival=None):
        """The handle (bucket, offset) of the record with this tag and queue ID time
        part, or this tag and arrival, or (neither given) this tag; else None."""
        buf, used = self.buckets[tag % BUCKETS], self.used[tag % BUCKETS]
        off = 0
        while off < used:
            got = struct.unpack_from(">III", buf, off)
            if got[TAG] == tag and (got[ID_TIME] == id_time or got[ARRIVAL] == arrival
                                    or id_time is arrival is None):
                return buf, off
            off += rec_len(buf, off)
        return None

    def _resize(self, which, size):
        new = bytearray(size + size // 4 + 16)
        used = self.used[which]
        if used:
            memoryview(new)[:used] = memoryview(self.buckets[which])[:used]
        self.buckets[which] = new
        return new

    def add(self, rec):
        """Add a packed record; False if its queue ID is already there."""
        h = head(rec, 0)
        if self.find(h[TAG], h[ID_TIME]) is not None:
            return False
        which, n = h[TAG] % BUCKETS, len(rec)
        buf, used = self.buckets[which], self.used[which]
        if used + n > len(buf):
            buf = self._resize(which, used + n)
        memoryview(buf)[used:used + n] = rec
        self.used[which] = used + n
        self.count += 1
        return True

    def remove(self, handle):
        """Remove a record (every handle into its bucket is stale afterwards)."""
        buf, off = handle
        which = head(buf, off)[TAG] % BUCKETS
        n, used, mv = rec_len(buf, off), self.used[which], memoryview(buf)
        while off + n < used:       # shift left in pieces that do not overlap
            k = min(n, used - off - n)
            mv[off:off + k] = mv[off + n:off + n + k]
            off += k
        self.used[which] = used - n
        self.count -= 1
        if used - n < len(buf) // 2 - 64:
            self._resize(which, used - n)

    def offsets(self, which):
        """The offsets of the records in bucket which (a list)."""
        out = []
        buf, off = self.buckets[which], 0
        while off < self.used[which]:
            out.append(off)
            off += rec_len(buf, off)
        return out

    def __iter__(self):
        """The queue IDs (builds no Message); no record may be added or removed
        while the iteration runs."""
        for which in range(BUCKETS):
            for off in self.offsets(which):
                h = head(self.buckets[which], off)
                yield fmt.queue_id_of(h[ID_TIME], h[TAG])

    def order(self):
        """(base, runs): per bucket, the sorted keys ((arrival - base) << 32 | tag)
        of its records: small ints in small lists, never one big block."""
        base = None
        for which in range(BUCKETS):
            for off in self.offsets(which):
                arrival = struct.unpack_from(">I", self.buckets[which], off)[0]
                base = arrival if base is None or arrival < base else base
        runs = []
        for which in range(BUCKETS):
            run = []
            for off in self.offsets(which):
                arrival, _, tag = struct.unpack_from(">III", self.buckets[which], off)
                run.append(((arrival - base) << 32) | tag)
            if run:
                run.sort()
                runs.append(run)
        return base, runs

    # --- queued messages -------------------------------------------------------------

    def find_id(self, queue_id):
        """The handle of a live queue ID's record, or None."""
        if queue_id != self.last_id:    # (qmgr asks for one message several times in a row)
            if not isinstance(queue_id, str):
                return None
            tag, id_time = fmt.tag_of(queue_id), fmt.id_time_of(queue_id)
            if tag is None or id_time is None or fmt.queue_id_of(id_time, tag) != queue_id:
                return None
            self.last_id, self.last_tag, self.last_time = queue_id, tag, id_time
        return self.find(self.last_tag, self.last_time)

    def add_message(self, msg):
        """Add a Message's record; False if its queue ID is already queued."""
        rec = pack(msg, self.journal.segs)
        size = head(rec, 0)[SIZE]           # allocations first: a MemoryError
        keys = needed(rec, 0)               # leaves the index unchanged
        if not self.add(rec):
            return False
        self.live_bytes += size
        self.journal.refs((), keys)
        return True

    def _update(self, handle, at, layout, values):
        old = needed(handle[0], handle[1])
        struct.pack_into(layout, handle[0], handle[1] + at, *values)
        self.journal.refs(old, needed(handle[0], handle[1]))

    def set_state(self, handle, data, seg, pos):
        """Apply a state record (dict) found at (seg, pos) to a message's record."""
        buf, off = handle
        i = data.get("i")
        if not isinstance(i, int) or not 0 <= i < head(buf, off)[NRCPT]:
            return
        at = rcpt_at(buf, off, i)
        code, attempts = struct.unpack_from(">BH", buf, at)
        got = data.get("a")
        code = status_code(data.get("s"), code)
        attempts = max(0, min(got, 0xFFFF)) if isinstance(got, int) else attempts
        self._update(handle, at - off, RCPT, (code, attempts, seg.key, pos))

    def set_held(self, handle, held, seg):
        """Apply a hold (held True) or release record found in seg."""
        self._update(handle, _FLAGS_AT, ">Bi", (1 if held else 0, seg.key))

    def is_held(self, handle):
        """True if the message of handle is on hold."""
        return bool(head(handle[0], handle[1])[FLAGS] & 1)

    def states(self, handle):
        """(status indexes, attempts): two lists with one entry per recipient."""
        buf, off = handle
        codes, tries = [], []
        for i in range(head(buf, off)[NRCPT]):
            code, attempts = struct.unpack_from(">BH", buf, rcpt_at(buf, off, i))
            codes.append(code)
            tries.append(attempts)
        return codes, tries

    def finish(self, queue_id, seg):
        """A done record for queue_id was written to (or found in) seg: the message
        leaves the index. False if it is not live."""
        handle = self.find_id(queue_id)
        if handle is None:
            return False
        h, keys = head(handle[0], handle[1]), needed(handle[0], handle[1])
        self.live_bytes -= h[SIZE]
        self.remove(handle)
        self.journal.refs(keys, ())
        self.journal.tombstone(seg, h[ENV_SEG])
        return True

    # --- Message objects, built on demand --------------------------------------------

    def build(self, handle, states=True):
        """A fresh Message for a record (None if its envelope is unreadable);
        states=False: the recipients' replies and next tries are not read."""
        buf, off = handle
        h = head(buf, off)
        files = {}
        try:
            msg = self._envelope(files, h)
            if msg is None:
                return None
            msg.segs = [struct.unpack_from(">i", buf, off + _HEAD_LEN + 4 * i)[0] for i in range(h[NSEGS])]
            msg.held, msg.ctl_seg = bool(h[FLAGS] & 1), h[HOLD_SEG]
            for i, r in enumerate(msg.recipients):
                code, r.attempts, r.seg, r.pos = struct.unpack_from(RCPT, buf, rcpt_at(buf, off, i))
                r.status = STATUSES[code]
                state = self.journal.read_record(files, r.seg, r.pos, fmt.T_STATE, h[TAG])[0] \
                    if r.seg and states else None
                if state is not None and state.get("i") == i:
                    r.reply, r.next_try = state.get("r"), state.get("n")
            return msg
        finally:
            for f in files.values():
                f.close()
                self.journal.handles_closed(f)
            files = f = None

    def _envelope(self, files, h):
        queue_id = fmt.queue_id_of(h[ID_TIME], h[TAG])
        data, length = self.journal.read_record(files, h[ENV_SEG], h[ENV_POS], fmt.T_ENVELOPE, h[TAG])
        msg = None if data is None else message_from_envelope(data, h[TAG], h[ENV_SEG])
        if msg is None or msg.id != queue_id or len(msg.recipients) != h[NRCPT]:
            log("warning", "%s: envelope unreadable at offset %d of segment %d" % (
                queue_id, h[ENV_POS], h[ENV_SEG]))
            return None
        msg.env_seg, msg.env_pos = h[ENV_SEG], h[ENV_POS]
        msg.env_end = h[ENV_POS] + fmt.HEAD_SIZE + length
        return msg


class Listing:
    """Spool.messages(): the live messages oldest first (ties in no set order), each
    a fresh Message built when iteration reaches it; messages finished meanwhile
    are skipped. Supports len(), truth, iteration, indexing and == list."""

    def __init__(self, index, base, runs):
        self._index = index
        self._base = base
        self._runs = runs
        self._len = 0
        for run in runs:
            self._len += len(run)

    def __len__(self):
        return self._len

    def __bool__(self):
        return self._len > 0

    def _keys(self):
        """The keys of all runs in order."""
        if not compat.MICROPYTHON:      # CPython's 1024 runs: a heap, not a scan per key
            import heapq
            return heapq.merge(*self._runs)
        return self._merged()

    def _merged(self):
        # a merge, one scan of the runs per key (a board's 64)
        runs = self._runs
        at = [0] * len(runs)
        while True:
            best = -1
            for j in range(len(runs)):
                if at[j] < len(runs[j]) and (best < 0 or runs[j][at[j]] < runs[best][at[best]]):
                    best = j
            if best < 0:
                return
            at[best] += 1
            yield runs[best][at[best] - 1]

    def _message(self, key):
        handle = self._index.find(key & 0xFFFFFFFF, None, self._base + (key >> 32))
        return None if handle is None else self._index.build(handle)

    def __iter__(self):
        for key in self._keys():
            msg = self._message(key)
            if msg is not None:
                yield msg

    def __getitem__(self, i):
        if not 0 <= i < self._len:
            raise IndexError(i)
        for key in self._keys():
            if i == 0:
                return self._message(key)
            i -= 1

    def __eq__(self, other):
        return isinstance(other, (list, tuple)) and list(self) == list(other)

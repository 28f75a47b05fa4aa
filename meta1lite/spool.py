# meta1lite.spool - the flash-backed CBOR queue: an append-only journal in segment
# files, group commit, recovery, quarantine, limits, injection by other processes.
#
# Owns: everything under the spool directory and the in-memory index of queued
# messages. Must never: acknowledge (return from commit) before the fsync that
# covers the envelope and every chunk of the message; need a new directory entry
# to be durable for a commit (the MicroPython unix port cannot sync a directory);
# hold a message body in RAM; raise out of recover() because of bad bytes on disk.
# Shared code: MicroPython and CPython. Split for board-sized compile heaps:
# spoolfmt.py (bytes on disk), spoolidx.py (Message, writer, errors),
# spoolindex.py (the compact in-memory index; Messages built on demand from disk),
# spooljournal.py (segments, appends, group sync, freeing), spoolrecover.py
# (replay, quarantine, incoming, inject), this file (accepting mail, limits,
# delivery state, the public API).
#
# Memory: a queued message costs one packed record in RAM (spoolindex.py: IDs,
# times, size, where its frames are, recipient statuses and attempts), ~75 bytes
# on MicroPython with 1-2 recipients; senders, addresses, replies and info stay on
# disk, and get() / messages() read them back into a fresh Message each time
# (the envelope frame plus the newest state frame of each recipient).
#
# Layout under the spool directory:
#   seg/NNNNNNNN   journal segments (8-digit number), created AHEAD of need (when the
#                  current one passes half full), recycled in place when freed
#   incoming/ID    standalone segments written by other processes (inject()),
#                  adopted read-only; retired and removed when their messages are done
#   corrupt/       what could not be read: damaged byte ranges, salvaged messages
#   tmp/           temporaries of inject(); removed at recovery
#
# Frame (every record; see spoolfmt.py):  magic 9D 4D | type (1) | generation (4) |
#   tag (4) | payload length (4) | crc32 (4, over type..length and the payload) |
#   payload (a CBOR map with "v": format version). Big-endian.
# A segment begins with a header frame (type H, {"m", "seg", "seq", "kind"}); its
# generation (random) is carried by every frame of this use of the file, so bytes
# from a previous use are ignored; "seq" orders segment uses for replay.
# Records (tag = the message's tag = its queue ID's random half as a number):
#   C chunk     {"n": chunk number from 0, "data": bytes}   the body, as it arrives
#   E envelope  {"id", "from", "rcpt": [addr], "st": [status], "t": arrival,
#                "size", "chunks", "segs": [segment numbers of the chunks, 0 = this
#                file], "off": offset of chunk 0, "info"}   commits the message
#   S state     {"id", "i": recipient index, "s": status, "r": reply, "a": attempts,
#                "n": next try (wall) or None, "t"}
#   K hold      {"id", "h": true (hold) | false (release)}
#   D done      {"id", "why": done | deleted | corrupt | aborted}
#   Z retired   (as a segment's first frame: the file is inert, remove it)
# A message is live from its envelope until its D record. Replay: incoming files,
# then journal segments by seq, frames by offset. A bad frame followed by valid ones
# is damage (saved to corrupt/, logged); a bad frame with nothing valid after it is
# the end of the data (a torn append). A message whose chunks do not all verify is
# salvaged to corrupt/QUEUEID (envelope CBOR + readable body) and closed with a D.
# A segment is freed when no live message or open writer needs a frame in it, and
# no D record in it still cancels an envelope in a segment that exists.
# Incoming files get negative segment keys in memory (-1, -2, ... as adopted).
from meta1lite import compat
from meta1lite import spoolfmt as fmt
from meta1lite.spoolidx import (  # noqa: F401 - public API
    FINAL,
    STATUSES,
    CorruptMessage,
    Message,
    MessageWriter,
    Recipient,
    Segment,
    SpoolFull,
    open_rw,
    write_all,
)
from meta1lite.spoolindex import Index, IndexMethods, head, rcpt_at
from meta1lite.spooljournal import Journal
from meta1lite.spoolrecover import Recovery

SEGMENT_SIZE = 256 * 1024       # bytes per journal segment
CHUNK_SIZE = compat.IO_CHUNK    # body bytes per chunk frame
FREE_SEGMENTS = 2               # freed segments kept for reuse; more are removed
MAX_REPLY = 300                 # characters of a delivery reply kept in state
LOG = "spool"


class Spool(Recovery, Journal, IndexMethods):
    """The queue. Call recover() first (the daemon, at startup).

    get() and messages() return fresh Message copies built from disk: mutating them
    changes nothing; count(), exists() and is_held() answer without building one."""

    def __init__(self, path, max_queue_size, max_messages, min_free_space,
                 segment_size=SEGMENT_SIZE, hostname=None, chunk_size=CHUNK_SIZE,
                 free_segments=FREE_SEGMENTS):
        self.path = path.rstrip("/") or "/"
        self.max_queue_size = max_queue_size
        self.max_messages = max_messages
        self.min_free_space = min_free_space
        self.segment_size = segment_size
        self.hostname = hostname
        self.chunk_size = chunk_size
        self.free_segments = free_segments
        self.seg_dir = self.path + "/seg"
        self.incoming_dir = self.path + "/incoming"
        self.corrupt_dir = self.path + "/corrupt"
        self.tmp_dir = self.path + "/tmp"
        self._segs = {}
        self._free = []
        self._next = None
        self._cur = None
        self._dirty = []
        self._index = Index()
        self._damaged = {}
        self._writers = {}
        self._pending = {}          # queue ID -> [(rcpt, status, attempts)] being synced
        self._chunk_counts = {}
        self._in_key = 0
        self._live_bytes = 0
        self._inflight_bytes = 0
        self._seq = 0
        self._wseq = 0
        self._synced = 0
        self._round = None
        self._readonly = False

    def _log(self, level, text):
        compat.log.log(level, LOG, text)

    def _write(self, f, data):
        write_all(f, data)

    # --- accepting mail ----------------------------------------------------------

    def _ready(self):
        if self._cur is None:
            raise RuntimeError("spool not recovered (call recover() first)")

    def _free_space(self):
        try:
            return compat.free_space(self.path)
        except (OSError, AttributeError):
            return None

    def _limit_reason(self, size_hint, count):
        if count >= self.max_messages:
            return "too many messages in the queue"
        if self._live_bytes + self._inflight_bytes + size_hint > self.max_queue_size:
            return "queue size limit reached"
        free = self._free_space()
        if free is not None and free < self.min_free_space + size_hint:
            return "insufficient free space in the queue file system"
        return None

    def check_accept(self, size_hint=0):
        """None if a message of size_hint bytes may be accepted, else the reason."""
        return self._limit_reason(size_hint, self._index.count + len(self._writers))

    def _tag_used(self, tag):
        if self._index.find(tag) is not None:
            return True
        for writer in self._writers.values():
            if writer.tag == tag:
                return True
        return False

    def _new_id(self):
        while True:
            queue_id, tag = fmt.new_queue_id(compat.wall_time())
            if not self._tag_used(tag) and queue_id not in self._damaged:
                return queue_id, tag

    def new_message(self):
        """A MessageWriter for one incoming message (has .queue_id)."""
        self._ready()
        queue_id, tag = self._new_id()
        writer = MessageWriter(self, queue_id, tag, self.chunk_size)
        self._writers[queue_id] = writer
        return writer

    def _write_chunk(self, writer, data):
        reason = self._limit_reason(len(data), 0)
        if reason is not None:
            raise SpoolFull(reason)
        seg, pos = self._append(fmt.T_CHUNK, writer.tag, (fmt.chunk_prefix(writer.nchunks, len(data)), data))
        if writer.first is None:
            writer.first = pos
        if not writer.segs or writer.segs[-1] != seg.key:
            writer.segs.append(seg.key)
            seg.refs += 1
        writer.nchunks += 1
        writer.flushed += len(data)
        self._inflight_bytes += len(data)

    def _drop_writer(self, writer):
        if self._writers.pop(writer.queue_id, None) is None:
            return
        self._inflight_bytes -= writer.flushed
        self._refs(writer.segs, ())
        writer.closed = True
        writer._buf = None

    async def commit(self, writer, sender, recipients, info=None):
        """Commit a written message; returns its queue ID once it is durable.

        Raises SpoolFull (452 4.3.1) or OSError; then nothing of it will load."""
        self._ready()
        writer.flush()
        if writer.error is None and self._index.count >= self.max_messages:
            writer._fail(SpoolFull("too many messages in the queue"))
        if writer.error is not None:
            self._drop_writer(writer)
            raise writer.error
        msg = self._writer_message(writer, sender, recipients, info)
        try:
            seg, pos = self._append(fmt.T_ENVELOPE, writer.tag, (fmt.record(self._envelope(msg)),))
        except OSError as exc:
            self._drop_writer(writer)
            raise SpoolFull("no space left on device") if compat.is_no_space(exc) else exc
        msg.env_seg, msg.env_pos, msg.env_end = seg.key, pos, seg.end
        seg.refs += 1               # kept while the sync runs
        try:
            await self._sync_to(self._wseq)
        except OSError:
            seg.refs -= 1
            self._cancel(msg, seg)
            self._drop_writer(writer)
            raise
        self._index_add(msg)
        seg.refs -= 1
        self._drop_writer(writer)
        self._log("info", "%s: from=<%s>, size=%d, nrcpt=%d (queue active)" % (
            msg.id, sender, msg.size, len(recipients)))
        return msg.id

    def _writer_message(self, writer, sender, recipients, info):
        msg = Message(writer.queue_id, writer.tag, sender, [Recipient(a) for a in recipients],
                      int(compat.wall_time()), writer.size, info)
        msg.nchunks = writer.nchunks
        msg.segs = list(writer.segs)
        msg.first = writer.first or 0
        return msg

    def _envelope(self, msg):
        segs = [0 if key == msg.env_seg else key for key in msg.segs]
        return {"id": msg.id, "from": msg.sender, "rcpt": [r.addr for r in msg.recipients],
                "st": [r.status for r in msg.recipients], "t": msg.arrival, "size": msg.size,
                "chunks": msg.nchunks, "segs": segs, "off": msg.first, "info": msg.info}

    def _cancel(self, msg, env_seg):
        try:
            seg, _ = self._append(fmt.T_DONE, msg.tag, (fmt.record({"id": msg.id, "why": "aborted"}),))
            self._tombstone(seg, env_seg.key)
        except OSError as exc:
            self._log("error", "%s: cannot cancel the unsynced envelope: %s" % (msg.id, exc))

    # --- the bodies ------------------------------------------------------------------

    def read_body(self, queue_id):
        """Generator of the body's chunks (bytes); raises CorruptMessage if unreadable."""
        handle = self._find(queue_id)
        if handle is None:
            raise KeyError(queue_id)
        msg = self._build(handle, False)
        if msg is None:
            raise CorruptMessage("%s: envelope unreadable" % queue_id)
        return self._chunks(msg, True)

    def _chunks(self, msg, strict):
        expected = 0
        for i, key in enumerate(msg.segs):
            seg = self._segs.get(key)
            if seg is None:
                break
            with open(seg.path, "rb") as f:
                start = msg.first if i == 0 else seg.start
                frames = fmt.iter_tagged(f, start, seg.end, seg.gen, fmt.T_CHUNK, msg.tag, seg.skips)
                for pos, peek in frames:
                    chunk = fmt.parse_chunk(peek)
                    number = chunk[0] if chunk else None
                    if number == expected or (not strict and number is not None):
                        expected += 1
                        f.seek(pos + fmt.HEAD_SIZE + chunk[1])
                        yield f.read(chunk[2])
                    elif strict and number is not None and number > expected:
                        break
                    if expected >= msg.nchunks:
                        return
        if strict and expected < msg.nchunks:
            raise CorruptMessage("%s: body chunk %d unreadable" % (msg.id, expected))

    # --- delivery state and control ------------------------------------------------

    async def record_attempt(self, queue_id, results):
        """Record delivery results [(rcpt_index, status, reply, next_try_wall_or_None)];
        appends a done record when every recipient is final. Durable when it returns,
        and visible (get, messages) only then. False if the message is not queued."""
        handle = self._find(queue_id)
        if handle is None:
            return False
        buf, off = handle
        h = head(buf, off)
        codes, tries = [], []
        for i in range(h[9]):
            at = rcpt_at(buf, off, i)
            codes.append(buf[at])
            tries.append(buf[at + 1] * 256 + buf[at + 2])
        for index, status, _, _ in results:
            if status not in STATUSES:
                raise ValueError("bad recipient status %r" % (status,))
            if not 0 <= index < h[9]:
                raise IndexError("recipient index %r out of range" % (index,))
        pending = self._pending.setdefault(queue_id, [])
        for index, code, count in pending:      # written by a call still syncing
            codes[index], tries[index] = code, count
        written = []                # (state record or None for done, segment, offset)
        mine = []                   # our entries in pending
        try:
            for index, status, reply, next_try in results:
                codes[index] = STATUSES.index(status)
                tries[index] += 1
                pending.append((index, codes[index], tries[index]))
                mine.append(pending[-1])
                data = {"id": queue_id, "i": index, "s": status, "r": reply[:MAX_REPLY] if reply else None,
                        "a": tries[index], "n": next_try, "t": int(compat.wall_time())}
                self._written(written, data, self._append(fmt.T_STATE, h[2], (fmt.record(data),)))
            if not [c for c in codes if STATUSES[c] not in FINAL]:
                done = fmt.record({"id": queue_id, "why": "done"})
                self._written(written, None, self._append(fmt.T_DONE, h[2], (done,)))
            await self.sync()
        finally:
            for _, seg, _ in written:
                seg.refs -= 1
            for entry in mine:
                pending.remove(entry)
            if not pending and self._pending.get(queue_id) is pending:
                del self._pending[queue_id]
        handle = self._find(queue_id)       # handles do not survive an await
        for data, seg, pos in written:
            if handle is not None and data is None:
                self._finish(queue_id, seg)
            elif handle is not None:
                self._set_state(handle, data, seg, pos)
        self._collect()
        return True

    def _written(self, written, data, where):
        where[0].refs += 1          # kept until the record is applied
        written.append((data, where[0], where[1]))

    def _append_done(self, handle, why):
        h = head(handle[0], handle[1])
        queue_id = fmt.queue_id_of(h[1], h[2])
        seg, _ = self._append(fmt.T_DONE, h[2], (fmt.record({"id": queue_id, "why": why}),))
        self._finish(queue_id, seg)

    def _control(self, queue_id, held):
        handle = self._find(queue_id)
        if handle is None:
            return False
        if held is None:
            self._append_done(handle, "deleted")
            self._log("info", "%s: removed" % queue_id)
        else:
            seg, _ = self._append(fmt.T_HOLD, head(handle[0], handle[1])[2],
                                  (fmt.record({"id": queue_id, "h": held}),))
            self._set_held(handle, held, seg)
            self._log("info", "%s: %s" % (queue_id, "placed on hold" if held else "released from hold"))
        self._sync_now()
        self._collect()
        return True

    def hold(self, queue_id):
        """Put a message on hold (durable on return); False if unknown."""
        return self._control(queue_id, True)

    def release(self, queue_id):
        """Release a held message (durable on return); False if unknown."""
        return self._control(queue_id, False)

    def delete(self, queue_id):
        """Remove a message from the queue (durable on return); False if unknown."""
        return self._control(queue_id, None)

    def close(self):
        """Sync and close the journal."""
        if self._cur is None:
            return
        self._sync_now()
        for seg in self._dirty + [self._cur]:
            if seg.f is not None:
                seg.f.close()
                seg.f = None
        self._dirty = []
        self._cur = None


def open_configured(cfg, readonly=False):
    """The spool a configuration names, recovered (readonly: nothing is written, for
    tools while the daemon runs); bad files are moved aside, never fatal."""
    q = cfg["qmgr"]
    spool = Spool(cfg["spool"], q["max_queue_size"], q["max_messages"], q["min_free_space"],
                  hostname=cfg["hostname"])
    spool.recover(readonly=readonly)
    return spool

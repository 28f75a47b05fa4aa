# meta1lite.spool - the flash-backed CBOR queue: an append-only journal in segment
# files, group commit, recovery, quarantine, limits, injection by other processes.
#
# Owns: everything under the spool directory and the in-memory index of queued
# messages. Must never: acknowledge (return from commit) before the fsync that
# covers the envelope and every chunk of the message; need a new directory entry
# to be durable for a commit (the MicroPython unix port cannot sync a directory);
# hold a message body in RAM; raise out of recover() because of bad bytes on disk.
# Shared code: MicroPython and CPython. Split for board-sized compile heaps:
# spoolfmt.py (bytes on disk), spoolidx.py (index entries, writer, errors),
# spoolrecover.py (replay, quarantine, incoming, inject), this file (journal,
# group commit, limits, freeing, the public API).
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
from meta1lite.spoolrecover import Recovery

SEGMENT_SIZE = 256 * 1024       # bytes per journal segment
CHUNK_SIZE = 4096               # body bytes per chunk frame
FREE_SEGMENTS = 2               # freed segments kept for reuse; more are removed
MAX_REPLY = 300                 # characters of a delivery reply kept in state
SMALL_FRAME = 1024              # frames up to this are written with one write()
LOG = "spool"


class _Round:
    def __init__(self):
        self.event = compat.asyncio.Event()
        self.upto = 0
        self.error = None


class Spool(Recovery):
    """The queue. Call recover() first (the daemon, at startup)."""

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
        self._index = {}
        self._damaged = {}
        self._writers = {}
        self._tags = set()
        self._chunk_counts = {}
        self._live_bytes = 0
        self._inflight_bytes = 0
        self._seq = 0
        self._wseq = 0
        self._synced = 0
        self._round = None
        self._readonly = False

    # --- logging and files ----------------------------------------------------

    def _log(self, level, text):
        compat.log.log(level, LOG, text)

    def _seg_path(self, number):
        return "%s/%08d" % (self.seg_dir, number)

    # --- applying records (replay and live) -------------------------------------

    def _apply_state(self, msg, rec, seg):
        i = rec.get("i")
        if not isinstance(i, int) or not 0 <= i < len(msg.recipients):
            return
        rcpt = msg.recipients[i]
        rcpt.status = rec.get("s", rcpt.status)
        rcpt.reply = rec.get("r")
        rcpt.attempts = rec.get("a", rcpt.attempts)
        rcpt.next_try = rec.get("n")
        rcpt.seg = seg.key
        self._retain(msg)

    def _index_add(self, msg):
        self._index[msg.id] = msg
        self._tags.add(msg.tag)
        self._live_bytes += msg.size
        self._retain(msg)

    def _retain(self, msg, keys=None):
        new = msg.needed() if keys is None else keys
        for key in msg.refs:
            if key not in new and key in self._segs:
                self._segs[key].live.discard(msg.id)
        for key in new:
            if key in self._segs:
                self._segs[key].live.add(msg.id)
        msg.refs = new

    def _finish(self, queue_id, seg):
        msg = self._index.pop(queue_id, None)
        if msg is not None:
            self._live_bytes -= msg.size
        else:
            msg = self._damaged.pop(queue_id, None)
        if msg is None:
            return None
        self._tags.discard(msg.tag)
        self._retain(msg, set())
        self._tombstone(seg, msg.env_seg)
        return msg

    def _tombstone(self, seg, env_key):
        env = self._segs.get(env_key)
        if env is not None and env is not seg:
            seg.needs.append((env.key, env.seq))

    # --- the journal: current segment, reservation, appends, sync ---------------

    def _start_journal(self, journal):
        cur = None
        for seg in journal:
            if seg.end > seg.start:
                cur = seg
        for seg in journal:
            if seg.end == seg.start and seg is not cur:
                del self._segs[seg.key]
                self._free.append(seg)
        while len(self._free) > self.free_segments:
            self._retire(self._free.pop())
        if cur is None:
            cur = self._reserve()
        self._use(cur)

    def _use(self, seg):
        seg.f = open_rw(seg.path)
        seg.f.seek(seg.end)
        self._segs[seg.key] = seg
        self._cur = seg

    def _max_number(self):
        top = 0
        for seg in list(self._segs.values()) + self._free + [self._next]:
            if seg is not None and seg.kind == "j":
                top = max(top, seg.key)
        return top

    def _reserve(self):
        if self._free:
            seg = self._free.pop(0)
            self._stamp(seg, False)
            return seg
        number = self._max_number() + 1
        seg = Segment(number, self._seg_path(number), 0, 0, "j")
        self._stamp(seg, True)
        return seg

    def _try_reserve(self):
        if self._next is not None:
            return
        try:
            self._next = self._reserve()
        except OSError as exc:
            self._log("warning", "cannot prepare the next queue segment: %s" % exc)

    def _stamp(self, seg, create):
        seg.gen = fmt.new_generation(seg.gen)
        self._seq += 1
        seg.seq = self._seq
        payload = fmt.header_payload(seg.key, seg.seq, "j")
        f = open(seg.path, "wb") if create else open_rw(seg.path)
        try:
            write_all(f, fmt.frame_head(fmt.T_HEADER, seg.gen, 0, (payload,)) + payload)
            compat.fsync_file(f)
        finally:
            f.close()
        if create:
            compat.sync_dir(self.seg_dir)
        seg.start = seg.end = fmt.HEAD_SIZE + len(payload)
        seg.live = set()
        seg.needs = []
        seg.skips = {}

    def _retire(self, seg):
        payload = fmt.record({})
        try:
            f = open_rw(seg.path)
            try:
                write_all(f, fmt.frame_head(fmt.T_RETIRED, 0, 0, (payload,)) + payload)
                compat.fsync_file(f)
            finally:
                f.close()
            compat.remove(seg.path)
        except OSError as exc:
            self._log("warning", "%s: cannot retire: %s" % (seg.path, exc))
            return False
        return True

    def _roll(self):
        old = self._cur
        if old.unsynced:
            self._dirty.append(old)
        else:
            old.f.close()
            old.f = None
        self._try_reserve()
        if self._next is None:
            raise SpoolFull("cannot create a queue segment")
        seg, self._next = self._next, None
        self._use(seg)
        return seg

    def _append(self, ftype, tag, parts):
        """Write one frame at the journal's end; returns (segment, offset)."""
        length = fmt.HEAD_SIZE
        for part in parts:
            length += len(part)
        seg = self._cur
        if seg.end + length > self.segment_size and seg.end > seg.start:
            seg = self._roll()
        head = fmt.frame_head(ftype, seg.gen, tag, parts)
        pos = seg.end
        try:
            if length <= SMALL_FRAME:
                frame = bytearray(head)
                for part in parts:
                    frame.extend(part)
                write_all(seg.f, frame)
            else:
                write_all(seg.f, head)
                for part in parts:
                    write_all(seg.f, part)
        except OSError:
            self._rewind(seg)
            raise
        seg.end = pos + length
        seg.unsynced = True
        self._wseq += 1
        if seg.end > self.segment_size // 2:
            self._try_reserve()
        return seg, pos

    def _rewind(self, seg):
        try:
            seg.f.seek(seg.end)
        except OSError:
            pass

    def _sync_now(self):
        upto = self._wseq
        while self._dirty:
            seg = self._dirty[0]
            compat.fsync_file(seg.f)
            seg.f.close()
            seg.f = None
            seg.unsynced = False
            self._dirty.pop(0)
        cur = self._cur
        if cur is not None and cur.unsynced:
            cur.unsynced = False
            try:
                compat.fsync_file(cur.f)
            except OSError:
                cur.unsynced = True
                raise
        self._synced = upto

    async def _sync_to(self, target):
        while self._synced < target:
            rnd = self._round
            if rnd is not None:
                await rnd.event.wait()
                if rnd.error is not None and target <= rnd.upto:
                    raise rnd.error
                continue
            rnd = self._round = _Round()
            try:
                await compat.asyncio.sleep(0)    # let ready sessions append first
                rnd.upto = self._wseq
                self._sync_now()
            except OSError as exc:
                rnd.error = exc
                raise
            finally:
                self._round = None
                rnd.event.set()

    async def sync(self):
        """Wait until everything appended so far is on stable storage (group sync)."""
        await self._sync_to(self._wseq)

    # --- freeing segments ------------------------------------------------------

    def _freeable(self, seg):
        if seg is self._cur or seg.live or seg in self._dirty:
            return False
        for key, seq in seg.needs:
            other = self._segs.get(key)
            if other is not None and other.seq == seq:
                return False
        return True

    def _collect(self):
        """Free every segment nobody needs (recycle a few, remove the rest)."""
        progress = True
        while progress:
            progress = False
            for seg in list(self._segs.values()):
                if self._freeable(seg) and self._release(seg):
                    progress = True

    def _release(self, seg):
        if seg.kind == "j" and len(self._free) < self.free_segments:
            try:
                self._stamp(seg, False)
            except OSError as exc:
                self._log("warning", "%s: cannot recycle: %s" % (seg.path, exc))
                return False
            self._free.append(seg)
        elif not self._retire(seg):
            return False
        del self._segs[seg.key]
        return True

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
        return self._limit_reason(size_hint, len(self._index) + len(self._writers))

    def _new_id(self):
        while True:
            queue_id, tag = fmt.new_queue_id(compat.wall_time())
            if tag not in self._tags and queue_id not in self._index:
                return queue_id, tag

    def new_message(self):
        """A MessageWriter for one incoming message (has .queue_id)."""
        self._ready()
        queue_id, tag = self._new_id()
        writer = MessageWriter(self, queue_id, tag, self.chunk_size)
        self._writers[queue_id] = writer
        self._tags.add(tag)
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
            seg.live.add(writer.queue_id)
        writer.nchunks += 1
        writer.flushed += len(data)
        self._inflight_bytes += len(data)

    def _drop_writer(self, writer, keep_tag=False):
        if self._writers.pop(writer.queue_id, None) is None:
            return
        self._inflight_bytes -= writer.flushed
        for key in writer.segs:
            if key in self._segs:
                self._segs[key].live.discard(writer.queue_id)
        if not keep_tag:
            self._tags.discard(writer.tag)
        writer.closed = True
        writer._buf = None

    async def commit(self, writer, sender, recipients, info=None):
        """Commit a written message; returns its queue ID once it is durable.

        Raises SpoolFull (452 4.3.1) or OSError; then nothing of it will load."""
        self._ready()
        writer.flush()
        if writer.error is None and len(self._index) >= self.max_messages:
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
        msg.env_seg, msg.env_end = seg.key, seg.end
        seg.live.add(msg.id)
        try:
            await self._sync_to(self._wseq)
        except OSError:
            self._cancel(msg, seg)
            self._drop_writer(writer)
            raise
        self._drop_writer(writer, keep_tag=True)
        self._index_add(msg)
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
        env_seg.live.discard(msg.id)
        try:
            seg, _ = self._append(fmt.T_DONE, msg.tag, (fmt.record({"id": msg.id, "why": "aborted"}),))
            self._tombstone(seg, env_seg.key)
        except OSError as exc:
            self._log("error", "%s: cannot cancel the unsynced envelope: %s" % (msg.id, exc))

    # --- the index and the bodies ------------------------------------------------

    def messages(self):
        """Index entries (Message) of every live message, oldest first."""
        found = list(self._index.values())
        found.sort(key=lambda m: (m.arrival, m.id))
        return found

    def get(self, queue_id):
        """The index entry (Message) of a live message, or None."""
        return self._index.get(queue_id)

    def read_body(self, queue_id):
        """Generator of the body's chunks (bytes); raises CorruptMessage if unreadable."""
        msg = self._index.get(queue_id)
        if msg is None:
            raise KeyError(queue_id)
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
        appends a done record when every recipient is final. Durable when it returns.
        Returns False if the message is not in the queue."""
        msg = self._index.get(queue_id)
        if msg is None:
            return False
        for index, status, reply, next_try in results:
            if status not in STATUSES:
                raise ValueError("bad recipient status %r" % (status,))
            rec = {"id": msg.id, "i": index, "s": status, "r": reply[:MAX_REPLY] if reply else None,
                   "a": msg.recipients[index].attempts + 1, "n": next_try, "t": int(compat.wall_time())}
            seg, _ = self._append(fmt.T_STATE, msg.tag, (fmt.record(rec),))
            self._apply_state(msg, rec, seg)
        if msg.done():
            self._append_done(msg, "done")
        await self.sync()
        self._collect()
        return True

    def _append_done(self, msg, why):
        seg, _ = self._append(fmt.T_DONE, msg.tag, (fmt.record({"id": msg.id, "why": why}),))
        self._finish(msg.id, seg)

    def _control(self, queue_id, held):
        msg = self._index.get(queue_id)
        if msg is None:
            return False
        if held is None:
            self._append_done(msg, "deleted")
            self._log("info", "%s: removed" % queue_id)
        else:
            seg, _ = self._append(fmt.T_HOLD, msg.tag, (fmt.record({"id": msg.id, "h": held}),))
            msg.held = held
            msg.ctl_seg = seg.key
            self._retain(msg)
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

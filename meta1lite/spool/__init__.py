# meta1lite.spool - the flash-backed CBOR queue: an append-only journal in segment
# files, group commit, recovery, quarantine, limits, injection by other processes.
#
# Owns: everything under the spool directory and the in-memory index of queued
# messages. Must never: acknowledge (return from commit) before the fsync that
# covers the envelope and every chunk of the message; need a new directory entry
# to be durable for a commit (the MicroPython unix port cannot sync a directory);
# hold a message body in RAM; raise out of recover() because of bad bytes on disk.
# Shared code: MicroPython and CPython. Split for board-sized compile heaps:
#   format.py    the bytes on disk: frames, records, queue IDs, a tolerant reader
#   message.py   Message, Recipient, the envelope record, MessageWriter, errors
#   journal.py   Journal: the segment files, appends, group sync, freeing
#   index.py     Index: the compact in-memory index; Messages built from disk
#   recovery.py  Recovery: replay, quarantine, incoming/, inject (start-up code: imported
#                for a call and dropped after it on a board, see Spool._recovery)
#   this file    Spool: accepting mail, limits, delivery state, the public API
# A Spool composes one Journal, one Index (which reads records back through the
# journal and keeps its segment reference counts) and, for a call, a Recovery (which
# loads files into both); none of them knows the Spool.
#
# Memory: a queued message costs one packed record in RAM (index.py: IDs, times,
# size, where its frames are, recipient statuses and attempts), ~75 bytes on
# MicroPython with 1-2 recipients; senders, addresses, replies and info stay on
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
#   seg.reserve    record_reserve bytes given back when the file system is full, so
#                  that delivery records still fit (space.RecordReserve)
#   lock, lock.d/  the lock of the process writing the spool (lock.py)
#
# Frame (every record; see format.py):  magic 9D 4D | type (1) | generation (4) |
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
import os
import sys
from errno import EIO

from meta1lite import compat, durable, heap
from meta1lite.const import const
from meta1lite.spool import format as fmt
from meta1lite.spool.index import TAG, Index, Listing, head
from meta1lite.spool.journal import Journal
from meta1lite.spool.message import (  # noqa: F401 - Message, Recipient: public API
    BufferPool,
    CorruptMessage,
    Message,
    MessageWriter,
    Recipient,
    SpoolFull,
    arriving,
    envelope_record,
    full_if_no_space,
    log,
)
from meta1lite.spool.space import low_space
from meta1lite.status import FINAL, SENT, STATUSES  # public API too (the spool stores the index)

_SEGMENT_SIZE = const(256 * 1024)  # bytes per journal segment (qmgr.segment_size)
# body bytes per chunk frame: a board's 1K buffers; CPython's 32K make a 100 KB body
# 4 frames to write and read back (crc, head, syscalls), not 25
CHUNK_SIZE = compat.IO_CHUNK if compat.MICROPYTHON else 8 * compat.IO_CHUNK
_FREE_SEGMENTS = const(2)       # freed segments kept for reuse (qmgr.free_segments)
_RECORD_RESERVE = const(16 * 1024)  # free space only state/done records may use (qmgr.record_reserve)
_POOLED_BUFFERS = const(8)      # chunk buffers kept for reuse (writers + body readers at once)
MAX_REPLY = const(300)          # characters of a delivery reply kept in state
TOO_BIG = "message size exceeds what the queue can ever hold"   # check_accept/SpoolFull
                                # reason that is permanent (smtps: 552 5.3.4)
_RECOVERY = const("meta1lite.spool.recovery")  # start-up code, dropped after each use (boards)


class Spool:
    """The queue. Call recover() first (the daemon, at startup).

    get() and messages() return fresh Message copies built from disk: mutating them
    changes nothing; count(), exists() and is_held() answer without building one."""

    def __init__(self, path, max_queue_size, max_messages, min_free_space,
                 segment_size=_SEGMENT_SIZE, chunk_size=CHUNK_SIZE,
                 free_segments=_FREE_SEGMENTS, record_reserve=_RECORD_RESERVE):
        self.path = path.rstrip("/") or "/"
        self.max_queue_size = max_queue_size
        self.max_messages = max_messages
        # new mail stops record_reserve before min_free_space; delivery state and
        # done records ignore both (a full flash must still drain)
        self.min_free_space = min_free_space + record_reserve
        self.chunk_size = min(chunk_size, segment_size // 4)    # never a segment per frame
        self.buffers = BufferPool(self.chunk_size, _POOLED_BUFFERS)
        self.journal = Journal(self.path + "/" + fmt.SEGMENT_DIR, segment_size, free_segments)
        self.journal.record_reserve.size = record_reserve      # SPOOL/seg.reserve
        self.index = Index(self.journal)
        self.damaged = {}           # queue ID -> Message whose chunks do not all verify (recovery.py)
        self._readonly = False      # recover(readonly)
        self._incoming_tried = ()   # incoming/ names at the last adoption (one that failed
                                    # waits for a new file or a restart, not every scan)
        self._writers = {}          # queue ID -> MessageWriter not yet committed
        self._pending = {}          # queue ID -> [(rcpt index, status index, attempts)] being synced
        self._inflight_bytes = 0    # body bytes of the writers in chunk frames
        self._room = False          # _fs_room(), once known (None: cannot be told)

    # --- loading -----------------------------------------------------------------

    def recover(self, readonly=False):
        """Load the queue from disk (startup); returns the number of live messages.

        Removes tmp/ orphans, replays incoming/ and seg/, saves damage to corrupt/ with
        a log line, prepares the current and next segments. Never raises for bad
        files. readonly=True (e.g. `queue list` while the daemon runs) only reads."""
        self._readonly = readonly
        return self._recovery("recover")

    def scan_incoming(self):
        """Adopt new files in incoming/; returns the number of messages adopted."""
        self._ready()
        try:
            names = os.listdir(self.path + "/" + fmt.INCOMING_DIR)
        except OSError:
            return 0
        known = [seg.path for seg in self.journal.segs.values() if seg.kind == "i"]
        folder = self.path + "/" + fmt.INCOMING_DIR + "/"
        new = [name for name in names if folder + name not in known]
        for name in new:        # recovery.py is imported only for a file not tried yet
            if name not in self._incoming_tried:
                self._incoming_tried = names
                return self._recovery("scan_incoming", new)
        return 0

    def inject(self, sender, recipients, chunks, info=None):
        """Queue a message from another process (sync; no daemon needed): writes a
        complete segment into incoming/ (tmp + fsync + rename + dir sync)."""
        return self._recovery("inject", sender, recipients, chunks, info)

    def _recovery(self, method, *args):
        # Recovery.method(*args). recovery.py runs at start, for a new incoming file and
        # for inject(): on a board (frozen code) it is imported for the call and dropped
        # after it, its heap returned (as mcp drops the configuration parser)
        loaded = _RECOVERY in sys.modules
        from meta1lite.spool.recovery import Recovery
        try:
            # incoming/ files (sendmail's, either runtime may read them): 1K/4K chunks
            return getattr(Recovery(self.path, self.journal, self.index,
                                    min(self.chunk_size, compat.IO_CHUNK),
                                    self.min_free_space, self.damaged, self._readonly),
                           method)(*args)
        finally:
            del Recovery            # nothing of the module left for the collection to keep
            if not loaded:
                heap.drop_one_shot((_RECOVERY,))

    # --- accepting mail ----------------------------------------------------------

    def _ready(self):
        if not self.journal.is_open():
            raise RuntimeError("spool not recovered (call recover() first)")

    def _limit_reason(self, size_hint, count):
        if count >= self.max_messages:
            return "too many messages in the queue"
        if self.index.live_bytes + self._inflight_bytes + size_hint > self.max_queue_size:
            return "queue size limit reached"
        return low_space(self.path, self.min_free_space, size_hint)

    def check_accept(self, size_hint=0):
        """None if a message of size_hint bytes may be accepted, else the reason;
        TOO_BIG when even an empty queue could not hold it (permanent)."""
        return self.never_fits(size_hint) or self._limit_reason(
            size_hint, self.index.count + len(self._writers))

    def never_fits(self, size):
        """TOO_BIG if a message of size bytes exceeds max_queue_size or the spool's
        whole file system less its reserves, else None. Reserves larger than the file
        system refuse every message alike: a misconfiguration, not TOO_BIG (452)."""
        if size > self.max_queue_size:
            return TOO_BIG
        room = self._fs_room()
        return TOO_BIG if room is not None and 0 < room < size else None

    def _fs_room(self):
        """The file system's usable size less the reserves (read once: it does not
        change, and check_accept runs at every MAIL); None where it cannot be told."""
        if self._room is False:
            try:
                self._room = durable.fs_size(self.path) - self.min_free_space
            except (OSError, AttributeError):
                self._room = None
        return self._room

    def _tag_used(self, tag):
        if self.index.find(tag) is not None:
            return True
        for writer in self._writers.values():
            if writer.tag == tag:
                return True
        return False

    def _new_id(self):
        while True:
            queue_id, tag = fmt.new_queue_id(compat.wall_time())
            if not self._tag_used(tag) and queue_id not in self.damaged:
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
            raise SpoolFull(self.never_fits(writer.flushed + len(data)) or reason)
        prefix = fmt.chunk_prefix(writer.nchunks, len(data))
        seg, pos = self.journal.append(fmt.T_CHUNK, writer.tag, (prefix, data))
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
        self.journal.refs(writer.segs, ())
        writer.closed = True
        self.buffers.give(writer._buf)
        writer._buf = None

    async def commit(self, writer, sender, recipients, info=None):
        """Commit a written message; returns its queue ID once it is durable.

        Raises SpoolFull (452 4.3.1) or OSError; then nothing of it will load. Any
        other exception (MemoryError, cancellation) also drops the writer."""
        try:
            return await self._commit(writer, sender, recipients, info)
        except BaseException:
            self._drop_writer(writer)       # idempotent
            raise

    async def _commit(self, writer, sender, recipients, info):
        self._ready()
        writer.flush()
        if writer.error is None and self.index.count >= self.max_messages:
            writer._fail(SpoolFull("too many messages in the queue"))
        if writer.error is not None:
            self._drop_writer(writer)
            raise writer.error
        msg = arriving(writer.queue_id, writer.tag, sender, recipients, writer.size, info,
                       writer.nchunks, list(writer.segs), writer.first or 0)
        try:
            seg, pos = self.journal.append_record(fmt.T_ENVELOPE, writer.tag, envelope_record(msg))
        except OSError as exc:
            self._drop_writer(writer)
            raise full_if_no_space(exc)
        msg.env_seg, msg.env_pos, msg.env_end = seg.key, pos, seg.end
        seg.refs += 1               # kept while the sync runs
        try:
            await self.journal.sync()
            if self.journal.any_failed(writer.segs + [seg.key]):    # a sync failed meanwhile
                raise OSError(EIO, "a queue sync failed while the message was written")
            self.index.add_message(msg)
        except BaseException:       # not acknowledged: the envelope must not load
            seg.refs -= 1
            self._cancel(msg, seg)
            self._drop_writer(writer)
            raise
        seg.refs -= 1
        self._drop_writer(writer)
        log("info", "%s: from=<%s>, size=%d, nrcpt=%d (queue active)" % (
            msg.id, sender, msg.size, len(recipients)))
        return msg.id

    def _cancel(self, msg, env_seg):
        try:
            seg, _ = self.journal.append_record(fmt.T_DONE, msg.tag, {"id": msg.id, "why": "aborted"})
            self.journal.tombstone(seg, env_seg.key)
        except (OSError, MemoryError) as exc:
            log("error", "%s: cannot cancel the unsynced envelope: %r" % (msg.id, exc))

    # --- reading -------------------------------------------------------------------

    def read_body(self, queue_id, reuse=False):
        """Generator of the body's chunks (bytes); raises CorruptMessage if unreadable.
        reuse: a full chunk is read into one pooled bytearray, valid until the next
        chunk is taken (no allocation per chunk: delivery on a board)."""
        handle = self.index.find_id(queue_id)
        if handle is None:
            raise KeyError(queue_id)
        msg = self.index.build(handle, False)
        if msg is None:
            raise CorruptMessage("%s: envelope unreadable" % queue_id)
        return self.journal.chunks(msg, True, self.buffers if reuse else None)

    def messages(self):
        """The live messages, oldest first: a sequence (len, truth, iteration,
        indexing) of fresh Message copies, each built from disk when reached."""
        base, runs = self.index.order()
        return Listing(self.index, base, runs)

    def queue_ids(self):
        """The live queue IDs, in no set order (no Message built, no list of them all);
        the spool must not change while the iteration runs (no await in between)."""
        return iter(self.index)

    def get(self, queue_id):
        """A fresh Message (a copy: changing it changes nothing) of a live message,
        or None."""
        handle = self.index.find_id(queue_id)
        return None if handle is None else self.index.build(handle)

    def count(self):
        """The number of live messages (cheap: no Message is built)."""
        return self.index.count

    def exists(self, queue_id):
        """True if queue_id is a live message (cheap: no Message is built)."""
        return self.index.find_id(queue_id) is not None

    def is_held(self, queue_id):
        """True if queue_id is live and on hold (cheap: no Message is built)."""
        handle = self.index.find_id(queue_id)
        return handle is not None and self.index.is_held(handle)

    # --- delivery state and control ------------------------------------------------

    async def record_attempt(self, queue_id, results):
        """Record delivery results [(rcpt_index, status, reply, next_try_wall_or_None)];
        appends a done record when every recipient is final. Durable when it returns,
        and visible (get, messages) only then; except the last results of a message
        sent to every recipient, synced within journal.LAZY_SYNC_S or by the next
        commit (a power cut before it sends the message again: a duplicate, never a
        loss; one flash sync fewer per message). False if the message is not queued."""
        handle = self.index.find_id(queue_id)
        if handle is None:
            return False
        codes, tries = self.index.states(handle)
        for index, status, _, _ in results:
            if status not in STATUSES:
                raise ValueError("bad recipient status %r" % (status,))
            if not 0 <= index < len(codes):
                raise IndexError("recipient index %r out of range" % (index,))
        tag = head(handle[0], handle[1])[TAG]
        pending = self._pending.setdefault(queue_id, [])
        for index, code, count in pending:      # written by a call still syncing
            codes[index], tries[index] = code, count
        written = []                # (state record or None for done, segment, offset)
        mine = []                   # our entries in pending
        try:
            for index, status, reply, next_try in results:
                codes[index] = STATUSES.index(status)
                tries[index] += 1
                entry = (index, codes[index], tries[index])
                pending.append(entry)
                mine.append(entry)
                data = {"id": queue_id, "i": index, "s": status, "r": reply[:MAX_REPLY] if reply else None,
                        "a": tries[index], "n": next_try, "t": int(compat.wall_time())}
                self._written(written, data, fmt.T_STATE, tag, data)
            done = not [c for c in codes if STATUSES[c] not in FINAL]
            if done:
                self._written(written, None, fmt.T_DONE, tag, {"id": queue_id, "why": "done"})
            if done and _all_sent(results):
                self.journal.sync_later()   # lost in a power cut: sent again, not lost
            else:
                await self.journal.sync()
        finally:
            self._release(queue_id, written, pending, mine)
        self._apply(queue_id, written)
        self.journal.collect()
        return True

    def _written(self, written, data, ftype, tag, fields):
        seg, pos = self.journal.append_record(ftype, tag, fields)
        seg.refs += 1               # kept until the record is applied
        written.append((data, seg, pos))

    def _release(self, queue_id, written, pending, mine):
        # what record_attempt pinned: its segments, its entries in pending
        for _, seg, _ in written:
            seg.refs -= 1
        for entry in mine:
            pending.remove(entry)
        if not pending and self._pending.get(queue_id) is pending:
            del self._pending[queue_id]

    def _apply(self, queue_id, written):
        handle = self.index.find_id(queue_id)       # handles do not survive an await
        if handle is None:
            return
        for data, seg, pos in written:
            if data is None:
                self.index.finish(queue_id, seg)
            else:
                self.index.set_state(handle, data, seg, pos)

    def _control(self, queue_id, held):
        handle = self.index.find_id(queue_id)
        if handle is None:
            return False
        tag = head(handle[0], handle[1])[TAG]
        if held is None:
            seg, _ = self.journal.append_record(fmt.T_DONE, tag, {"id": queue_id, "why": "deleted"})
            self.index.finish(queue_id, seg)
            log("info", "%s: removed" % queue_id)
        else:
            seg, _ = self.journal.append_record(fmt.T_HOLD, tag, {"id": queue_id, "h": held})
            self.index.set_held(handle, held, seg)
            log("info", "%s: %s" % (queue_id, "placed on hold" if held else "released from hold"))
        self.journal.sync_now()
        self.journal.collect()
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

    async def sync(self):
        """Wait until everything appended so far is on stable storage (group sync)."""
        await self.journal.sync()

    def close(self):
        """Sync and close the journal."""
        self.journal.close()


def open_configured(cfg, readonly=False):
    """The spool a configuration names, recovered (readonly: nothing is written, for
    tools while the daemon runs); bad files are moved aside, never fatal."""
    q = cfg["qmgr"]
    spool = Spool(cfg["spool"], q["max_queue_size"], q["max_messages"], q["min_free_space"],
                  segment_size=q["segment_size"],
                  free_segments=q["free_segments"], record_reserve=q["record_reserve"])
    spool.recover(readonly=readonly)
    return spool


def _all_sent(results):
    for _, status, _, _ in results:
        if status != SENT:
            return False
    return True

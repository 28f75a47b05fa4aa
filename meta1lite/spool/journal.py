# meta1lite.spool.journal - the spool's segment files: appends, group sync, reading
# frames back, and freeing segments nobody needs any more.
#
# Owns: every segment file known to the spool (journal segments and adopted
# incoming files, by key), the current and the next (pre-created) journal segment,
# the group-commit sync rounds, segment reference counts, recycling freed segments
# (truncated, then stamped anew) and retiring the rest. Must never: need a new directory entry for a
# commit to be durable (a new segment is created, fsynced and its directory synced
# AHEAD of need); free a segment while a live message or an open writer counts on it
# (Segment.refs), or while a done record in it still cancels an envelope in a
# segment that exists; know what a record means (the index and the Spool do).
# Shared code: MicroPython and CPython.
from errno import EIO

from meta1lite import compat, durable, heap
from meta1lite.const import const
from meta1lite.durable import write_all
from meta1lite.spool import format as fmt
from meta1lite.spool.message import CorruptMessage, SpoolFull, log
from meta1lite.spool.segment import Segment, close_quietly, open_and_close, open_rw, read_chunk
from meta1lite.spool.space import RESERVED_FOR, RecordReserve

# frames up to this are joined: one write(), one syscall (CPython: a whole chunk frame)
_SMALL_FRAME = 1024 if compat.MICROPYTHON else 64 * 1024
LAZY_SYNC_S = const(2)          # sync_later(): at the latest this long after
# A file handle this large gets heap kept for it (heap.Reserve, MicroPython): a
# LittleFS file object holds its cache, min(block, 4 x max(read, prog size)) = 1K on
# a Pico W, in one block with its state (1148 bytes on the sim); a posix file of the
# unix port is a few words.
_RESERVE_HANDLES_FROM = const(512)
_HANDLES_AT_ONCE = const(2)     # a body read while the next message's envelope is read
# Records (envelopes, recipients' states) kept in memory as written or last read, so
# that the Messages qmgr builds 4 times a message do not open, read and check the
# segment each time (CPython; a board's heap keeps none).
RECENT_RECORDS = 0 if compat.MICROPYTHON else 512


class _Round:
    def __init__(self):
        self.event = compat.asyncio.Event()
        self.upto = 0
        self.error = None


class Journal:
    """The segment files. start() (after recovery loaded them) opens the current
    journal segment; append() writes there, sync() makes it durable."""

    def __init__(self, seg_dir, segment_size, free_segments):
        self.seg_dir = seg_dir
        self.segment_size = segment_size
        self.free_segments = free_segments
        self.segs = {}          # key -> Segment: every file in use (recovery adds them)
        self.in_key = 0         # key of the newest adopted incoming file (-1, -2, ...)
        self._free = []         # freed journal segments kept for reuse
        self._next = None       # the pre-created next segment
        self._cur = None        # the segment appended to
        self._dirty = []        # rolled-away segments not yet synced
        self._seq = 0           # highest segment use number
        self._wseq = 0          # appends so far
        self._synced = 0        # appends covered by the last sync
        self._round = None      # the sync round running, if any
        self._later = None      # the task of sync_later(), while it waits
        self._later_upto = 0    # the appends sync_later() was asked to cover
        self.record_reserve = RecordReserve(seg_dir + ".reserve", 0)   # the Spool sizes it
        self._handle_reserve = heap.Reserve(0)     # sized by start()
        self._join_upto = _SMALL_FRAME
        self.failed = []        # keys of segments an fsync failed on (see _sync_failed)
        self.recent = {}        # (key, gen, pos) -> (ftype, tag, payload, length): RECENT_RECORDS

    def is_open(self):
        """True between start() and close()."""
        return self._cur is not None

    def _seg_path(self, number):
        return "%s/%08d" % (self.seg_dir, number)

    def refs(self, old, new):
        """Segment reference counts: a message stopped needing old, started new."""
        for key in old:
            if key not in new and key in self.segs:
                self.segs[key].refs -= 1
        for key in new:
            if key not in old and key in self.segs:
                self.segs[key].refs += 1

    def tombstone(self, seg, env_key):
        """A done record in seg cancels an envelope in env_key: keep seg until then."""
        env = self.segs.get(env_key)
        if env is not None and env is not seg:
            seg.needs[env.key] = env.seq

    # --- the current segment, reservation ------------------------------------------

    def start(self, found):
        """Open for appends after recovery: found = the journal segments replayed
        (in seq order); empty ones are freed, the newest non-empty one continues."""
        cur = None
        for seg in found:
            self._seq = max(self._seq, seg.seq)
            if seg.end > seg.start:
                cur = seg
        for seg in found:
            if seg.end == seg.start and seg is not cur:
                del self.segs[seg.key]
                self._free.append(seg)
        while len(self._free) > self.free_segments:
            self._retire(self._free.pop())
        if cur is None:
            cur = self._reserve()
        self._use(cur)
        self.record_reserve.fill()
        self._fit_file_handles(cur.path)

    def _fit_file_handles(self, path):
        handle, closed = heap.allocated_by(open_and_close, path)
        if handle >= _RESERVE_HANDLES_FROM:      # a file with its own cache (LittleFS)
            self._handle_reserve = heap.Reserve(handle, _HANDLES_AT_ONCE)
            # before the index, low in the heap: the measured handle, and a block of the
            # measured size (it also fits the small objects open() makes first)
            self.handles_closed(closed)
            # parts written one by one into that cache: the same flash operations,
            # and no joined copy of up to 1K (a new block per record and last chunk)
            self._join_upto = 0

    def _use(self, seg):
        seg.f = self._handle_reserve.call(open_rw, seg.path)
        seg.f.seek(seg.end)
        self.segs[seg.key] = seg
        self._cur = seg

    def _max_number(self):
        top = 0
        for seg in list(self.segs.values()) + self._free + [self._next]:
            if seg is not None and seg.kind == "j":
                top = max(top, seg.key)
        return top

    def _reserve(self):
        if self._free:
            seg = self._free[0]
            self._stamp(seg, False)     # stays in the free list if this fails
            self._free.pop(0)
            return seg
        number = self._max_number() + 1
        seg = Segment(number, self._seg_path(number), 0, 0, "j")
        self._stamp(seg, True)
        return seg

    def prepare_next(self):
        """Create the next segment now if there is none (a failure is logged)."""
        if self._next is not None:
            return
        try:
            self._next = self._reserve()
        except (OSError, MemoryError) as exc:
            log("warning", "cannot prepare the next queue segment: %r" % (exc,))

    def _write(self, f, data):
        # a small file's whole data: write, fsync, close
        try:
            write_all(f, data)
            durable.fsync_file(f)
        finally:
            f.close()
            self.handles_closed(f)

    def _stamp(self, seg, create):
        seg.gen = fmt.new_generation(seg.gen)
        self._seq += 1
        seg.seq = self._seq
        payload = fmt.header_payload(seg.key, seg.seq, "j")
        # truncated, never rewritten in place: LittleFS copies every block after a
        # rewritten first one (a recycled 32K segment cost 8 erases on the sim)
        self._write(self._handle_reserve.call(open, seg.path, "wb"),
                    fmt.frame(fmt.T_HEADER, seg.gen, 0, payload))
        if create and not durable.sync_new_entries(self.seg_dir):
            raise OSError(EIO, "%s: its directory entry could not be synced" % seg.path)
        seg.start = seg.end = fmt.HEAD_SIZE + len(payload)
        self._sound(seg)
        seg.refs = 0
        seg.needs = {}
        seg.skips = {}

    def _sound(self, seg):
        # a segment rewritten or retired holds no frame of the failed sync any more
        if seg.key in self.failed:
            self.failed.remove(seg.key)

    def _retire(self, seg):
        self._sound(seg)
        try:
            self._write(self._handle_reserve.call(open, seg.path, "wb"),
                        fmt.frame(fmt.T_RETIRED, 0, 0, fmt.record({})))
            durable.remove(seg.path)
        except OSError as exc:
            log("warning", "%s: cannot retire: %s" % (seg.path, exc))
            return False
        return True

    def _roll(self):
        # Everything that can fail (create, open, grow a list or dict) comes before
        # the first change, and is undone on any exception (MemoryError too): the
        # current segment keeps its open handle until the new one is in place.
        self.prepare_next()
        seg = self._next
        if seg is None:
            raise SpoolFull("cannot create a queue segment")
        old = self._cur
        keep = old.unsynced or self._round is not None     # a worker thread may sync it
        f = self._handle_reserve.call(open_rw, seg.path)
        try:
            f.seek(seg.end)
            self.segs[seg.key] = seg
            if keep:
                self._dirty.append(old)
        except BaseException:
            if self.segs.get(seg.key) is seg:
                del self.segs[seg.key]
            f.close()
            raise
        self._next = None
        seg.f = f
        self._cur = seg
        if not keep:
            self.handles_closed(close_quietly(old))
        return seg

    # --- appends and sync ------------------------------------------------------------

    def append(self, ftype, tag, parts):
        """Write one frame at the journal's end; returns (segment, offset)."""
        length = fmt.HEAD_SIZE
        for part in parts:
            length += len(part)
        seg = self._cur
        if seg.key in self.failed:
            seg = self._roll_from_failed(seg)
        if seg.end + length > self.segment_size and seg.end > seg.start:
            seg = self._roll()
        head = fmt.frame_head(ftype, seg.gen, tag, parts)
        pos = seg.end
        try:
            self._put(seg, head, parts, length)
        except BaseException as exc:    # OSError, MemoryError, cancellation: end unchanged
            self._rewind(seg)
            if not (ftype in RESERVED_FOR and compat.is_no_space(exc) and self.record_reserve.spend()):
                raise
            self._put_again(seg, head, parts, length)
        seg.end = pos + length
        seg.unsynced = True
        self._wseq += 1
        if seg.end > self.segment_size // 2:
            self.prepare_next()
        return seg, pos

    def _put(self, seg, head, parts, length):
        if length <= self._join_upto:
            frame = bytearray(head)
            for part in parts:
                frame.extend(part)
            write_all(seg.f, frame)
        else:
            write_all(seg.f, head)
            for part in parts:
                write_all(seg.f, part)

    def _put_again(self, seg, head, parts, length):
        # after the record reserve was given back to a full file system
        try:
            self._put(seg, head, parts, length)
        except BaseException:
            self._rewind(seg)
            raise

    def append_record(self, ftype, tag, fields):
        """append() of a record frame (fields as a dict); returns (segment, offset)."""
        payload = fmt.record(fields)
        seg, pos = self.append(ftype, tag, (payload,))
        self._keep_recent(seg, pos, (ftype, tag, payload, len(payload)))
        return seg, pos

    def _keep_recent(self, seg, pos, frame):
        if RECENT_RECORDS:
            if len(self.recent) >= RECENT_RECORDS:
                del self.recent[next(iter(self.recent))]    # the oldest kept
            self.recent[(seg.key, seg.gen, pos)] = frame

    def _rewind(self, seg):
        try:
            seg.f.seek(seg.end)
        except OSError:
            pass

    def sync_now(self):
        """fsync every segment with unsynced appends (blocking)."""
        upto = self._wseq
        while self._dirty:
            seg = self._dirty[0]
            durable.fsync_file(seg.f)
            f = close_quietly(seg)
            seg.unsynced = False
            self._dirty.pop(0)
            self.handles_closed(f)
        f = None
        cur = self._cur
        # during a round of the worker thread (syncthread) cur reads synced before its
        # fsync returned: a close() meanwhile must not take that as done
        if cur is not None and (cur.unsynced or self._round is not None):
            cur.unsynced = False
            try:
                durable.fsync_file(cur.f)
            except BaseException:
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
                if compat.HAS_THREADS:      # CPython: the fsyncs in a worker thread
                    from meta1lite.spool import syncthread
                    await syncthread.sync_round(self)
                else:
                    self.sync_now()
            except OSError as exc:
                rnd.error = exc
                rnd.upto = self._wseq   # frames appended during the round fail with it
                self._sync_failed()
                raise
            finally:
                self._round = None
                rnd.event.set()

    def _roll_from_failed(self, seg):
        # away from a segment an fsync failed on; if no new segment can be made (a full
        # disk), frames appended to it from now on are synced as usual
        try:
            return self._roll()
        except (OSError, SpoolFull):
            return seg

    def _sync_failed(self):
        # Linux reports a failed writeback once per file and marks its pages clean:
        # the next fsync of that file returns 0 with the frames lost. Every segment
        # with unsynced appends is marked failed: appends move to a new segment, and
        # a message with chunks in a failed segment cannot commit (Spool._commit).
        for seg in self._dirty + [self._cur]:
            if seg is not None and seg.unsynced and seg.key not in self.failed:
                self.failed.append(seg.key)
                log("error", "%s: a sync failed: appends go to a new segment" % seg.path)

    async def sync(self):
        """Wait until everything appended so far is on stable storage (group sync)."""
        await self._sync_to(self._wseq)

    def any_failed(self, keys):
        """True if an fsync failed on one of the segments keys (see _sync_failed)."""
        for key in keys:
            if key in self.failed:
                return True
        return False

    def sync_later(self):
        """Have what is appended so far synced within LAZY_SYNC_S, by the next sync
        anyone waits for or else by a task: for records whose loss costs a duplicate,
        never a message (a delivery's done record), one sync fewer per message."""
        self._later_upto = self._wseq
        if self._later is None:
            self._later = compat.asyncio.create_task(self._sync_soon())

    async def _sync_soon(self):
        # only what it was asked for: while mail flows, a commit's sync has covered
        # that by now, and syncing the appends made since (a session's chunks) would
        # cost the flash a copy of the last block for nothing
        try:
            await compat.sleep(LAZY_SYNC_S)
            if self._cur is not None:
                await self._sync_to(self._later_upto)
        except OSError as exc:
            log("warning", "deferred sync failed: %s" % exc)
            return                  # the next commit's sync tries again
        finally:
            self._later = None
        if self._cur is not None and self._synced < self._later_upto:
            self.sync_later()       # asked again while this one was syncing

    def close(self):
        """Sync and close the segment files (until the next start())."""
        self._handle_reserve.close()
        if self._cur is None:
            return
        self.sync_now()
        for seg in self._dirty + [self._cur]:
            if seg.f is not None:
                seg.f.close()
                seg.f = None
        self._dirty = []
        self._cur = None

    # --- reading frames back -----------------------------------------------------------

    def handles_closed(self, f=None):
        """A file opened here was closed: keep it (a closed handle's run of heap fits
        the next handle exactly, and keeping it allocates nothing; the caller drops its
        own references first), then refill what is still missing of the heap kept for
        the next ones. f: the closed handle, or None."""
        if f is not None:
            self._handle_reserve.keep(f)
        self._handle_reserve.refill()

    def open_read(self, path):
        """A segment opened to read, in the heap kept for it if the heap has no other
        run long enough (a board)."""
        return self._handle_reserve.call(open, path, "rb")

    def read_record(self, files, key, pos, ftype, tag):
        """(dict, payload length) of a valid frame (ftype, tag) at (segment key,
        pos); (None, 0) if there is none. files: key -> open file, reused and
        filled in (the caller closes them)."""
        seg = self.segs.get(key)
        if seg is None:
            return None, 0
        frame = self.recent.get((key, seg.gen, pos)) if RECENT_RECORDS else None
        read = frame is None
        if read:
            try:
                if key not in files:
                    files[key] = self.open_read(seg.path)
                status, frame = fmt.read_frame(files[key], pos, max(seg.end, pos + fmt.HEAD_SIZE), seg.gen)
            except OSError:
                return None, 0
            if status != fmt.OK:
                return None, 0
        if frame[0] != ftype or frame[1] != tag:
            return None, 0
        if read:
            self._keep_recent(seg, pos, frame)
        return fmt.decode_record(frame[2]), frame[3]

    def chunks(self, msg, strict, pool=None):
        """Generator of a message's body chunks (bytes), in order. strict: raise
        CorruptMessage at the first missing one; else yield what verifies. pool (a
        BufferPool): full chunks come in one of its buffers, reused for the next."""
        buf = pool.take() if pool is not None else None
        inner = self._chunks(msg, strict, buf)
        try:
            for chunk in inner:
                yield chunk
        finally:
            inner.close()       # its open segment: MicroPython would leave it to a collection
            inner = None        # (the finished generator's frame)
            if pool is not None:
                pool.give(buf)
            self.handles_closed()   # refills what an open that failed took

    def _chunks(self, msg, strict, buf):
        expected = 0
        for i, key in enumerate(msg.segs):
            seg = self.segs.get(key)
            if seg is None:
                break
            f = self.open_read(seg.path)
            frames = None
            try:
                start = msg.first if i == 0 else seg.start
                frames = fmt.iter_tagged(f, start, seg.end, seg.gen, fmt.T_CHUNK, msg.tag, seg.skips)
                for pos, peek in frames:
                    chunk = fmt.parse_chunk(peek)
                    number = chunk[0] if chunk else None
                    if number == expected or (not strict and number is not None):
                        expected += 1
                        f.seek(pos + fmt.HEAD_SIZE + chunk[1])
                        yield read_chunk(f, chunk[2], buf)
                    elif strict and number is not None and number > expected:
                        break
                    if expected >= msg.nchunks:
                        return
            finally:
                frames = None   # it holds the handle too: the kept handle must be free
                f.close()       # to go when the next open needs its run
                self.handles_closed(f)
                f = None
        if strict and expected < msg.nchunks:
            raise CorruptMessage("%s: body chunk %d unreadable" % (msg.id, expected))

    # --- freeing segments --------------------------------------------------------------

    def _freeable(self, seg):
        if seg is self._cur or seg.refs > 0 or seg in self._dirty:
            return False
        for key in seg.needs:
            other = self.segs.get(key)
            if other is not None and other.seq == seg.needs[key]:
                return False
        return True

    def collect(self):
        """Free every segment nobody needs (recycle a few, remove the rest); write the
        record reserve again if it was spent and there is room now."""
        self.record_reserve.fill()
        progress = True
        while progress:
            progress = False
            for seg in list(self.segs.values()):
                if self._freeable(seg) and self._release(seg):
                    progress = True

    def _release(self, seg):
        if seg.kind == "j" and len(self._free) < self.free_segments:
            try:
                self._stamp(seg, False)
            except OSError as exc:
                log("warning", "%s: cannot recycle: %s" % (seg.path, exc))
                return False
            self._free.append(seg)
        elif not self._retire(seg):
            return False
        del self.segs[seg.key]
        return True

# meta1lite.spooljournal - the spool's journal: segment files, appends, group sync,
# and freeing segments nobody needs any more.
#
# Owns: the current and the next (pre-created) journal segment, appending frames,
# the group-commit sync rounds, recycling freed segments in place and retiring the
# rest. Must never: need a new directory entry for a commit to be durable (a new
# segment is created, fsynced and its directory synced AHEAD of need); free a
# segment while a live message or an open writer counts on it (Segment.refs), or
# while a done record in it still cancels an envelope in a segment that exists.
# Mixed into meta1lite.spool.Spool. Shared code: MicroPython and CPython.
from meta1lite import compat
from meta1lite import spoolfmt as fmt
from meta1lite.spoolidx import Segment, SpoolFull, open_rw

SMALL_FRAME = 1024              # frames up to this are written with one write()


class _Round:
    def __init__(self):
        self.event = compat.asyncio.Event()
        self.upto = 0
        self.error = None


class Journal:
    """Journal methods of Spool."""

    def _seg_path(self, number):
        return "%s/%08d" % (self.seg_dir, number)

    def _tombstone(self, seg, env_key):
        """A done record in seg cancels an envelope in env_key: keep seg until then."""
        env = self._segs.get(env_key)
        if env is not None and env is not seg:
            seg.needs[env.key] = env.seq

    # --- the current segment, reservation ------------------------------------------

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
            self._write(f, fmt.frame_head(fmt.T_HEADER, seg.gen, 0, (payload,)) + payload)
            compat.fsync_file(f)
        finally:
            f.close()
        if create:
            compat.sync_dir(self.seg_dir)
        seg.start = seg.end = fmt.HEAD_SIZE + len(payload)
        seg.refs = 0
        seg.needs = {}
        seg.skips = {}

    def _retire(self, seg):
        payload = fmt.record({})
        try:
            f = open_rw(seg.path)
            try:
                self._write(f, fmt.frame_head(fmt.T_RETIRED, 0, 0, (payload,)) + payload)
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

    # --- appends and sync ------------------------------------------------------------

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
                self._write(seg.f, frame)
            else:
                self._write(seg.f, head)
                for part in parts:
                    self._write(seg.f, part)
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

    # --- freeing segments --------------------------------------------------------------

    def _freeable(self, seg):
        if seg is self._cur or seg.refs > 0 or seg in self._dirty:
            return False
        for key in seg.needs:
            other = self._segs.get(key)
            if other is not None and other.seq == seg.needs[key]:
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

# meta1lite.spoolrecover - the spool's startup recovery, quarantine and injection.
#
# Owns: replaying segment files into the index, adopting incoming/ files, saving
# damaged bytes and unreadable messages to corrupt/ with a log line, and inject()
# (a complete standalone segment written by another process). Must never: raise
# out of recover() for bad bytes on disk, or append to an incoming file.
# Mixed into meta1lite.spool.Spool (uses its journal and index methods).
# Shared code: MicroPython and CPython.
from meta1lite import compat
from meta1lite import spoolfmt as fmt
from meta1lite.spoolidx import Message, Recipient, Segment, SpoolFull, write_all

TORN_HEADER = 128               # a segment file this small with no valid header: torn creation


class Recovery:
    """Recovery and injection methods of Spool."""

    def _quarantine(self, path, name, why):
        target = self.corrupt_dir + "/" + name
        while compat.exists(target):
            target += "_"
        try:
            compat.rename(path, target)
        except OSError as exc:
            self._log("error", "cannot move %s to corrupt/: %s" % (path, exc))
            return
        self._log("warning", "%s: %s; moved to corrupt/%s" % (path, why, target.rsplit("/", 1)[1]))

    def _copy_range(self, f, start, stop, name):
        target = self.corrupt_dir + "/" + name
        if compat.exists(target):
            return False
        with open(target, "wb") as out:
            pos = start
            while pos < stop:
                f.seek(pos)
                block = f.read(min(fmt.SCAN_BLOCK, stop - pos))
                if not block:
                    break
                out.write(block)
                pos += len(block)
        return True

    def recover(self, readonly=False):
        """Load the queue from disk (startup); returns the number of live messages.

        Removes tmp/ orphans, replays incoming/ and seg/, saves damage to corrupt/ with
        a log line, prepares the current and next segments. Never raises for bad
        files. readonly=True (e.g. `queue list` while the daemon runs) only reads."""
        self._readonly = readonly
        if not readonly:
            for folder in (self.path, self.seg_dir, self.incoming_dir, self.corrupt_dir, self.tmp_dir):
                compat.makedirs(folder)
            self._clear_tmp()
        for name in sorted(self._listdir(self.incoming_dir)):
            self._adopt(name)
        journal = self._journal_segments()
        for seg in journal:
            self._segs[seg.key] = seg
        for seg in journal:
            self._replay(seg)
        self._chunk_counts = {}
        if readonly:
            return self._index.count
        self._start_journal(journal)
        self._settle_damaged()
        self._try_reserve()
        self._collect()
        self._sync_now()
        self._log("info", "recovered %d messages (%d bytes) from %s" % (
            self._index.count, self._live_bytes, self.path))
        return self._index.count

    def _listdir(self, path):
        try:
            import os
            return os.listdir(path)
        except OSError:
            return []

    def _clear_tmp(self):
        for name in self._listdir(self.tmp_dir):
            compat.remove(self.tmp_dir + "/" + name)
            self._log("info", "removed orphan temporary tmp/%s" % name)

    def _read_header(self, path, f):
        """(type, gen, record, end) of a segment file; None (after dealing with it)."""
        size = compat.file_size(path)
        status, frame = fmt.read_frame(f, 0, size, None)
        if status == fmt.OK:
            f.seek(0)
            gen = fmt.parse_head(f.read(fmt.HEAD_SIZE))[1]
            rec = fmt.decode_record(frame[2]) if frame[0] == fmt.T_HEADER else {}
            if frame[0] == fmt.T_RETIRED or (rec is not None and rec.get("m") == fmt.SEGMENT_MARK
                                             and isinstance(rec.get("seq"), int)):
                return frame[0], gen, rec, fmt.HEAD_SIZE + len(frame[2])
        f.close()
        if self._readonly:
            return None
        if size < TORN_HEADER and status != fmt.DAMAGED:
            compat.remove(path)
            self._log("info", "%s: removed (segment creation never completed)" % path)
        else:
            kind = "in-" if path.startswith(self.incoming_dir + "/") else "seg-"
            self._quarantine(path, kind + path.rsplit("/", 1)[1], "unreadable segment header")
        return None

    def _open_segment(self, path, key, kind):
        """A Segment for a file, or None if it is retired/unreadable (handled)."""
        try:
            f = open(path, "rb")
        except OSError as exc:
            self._log("error", "%s: cannot open: %s" % (path, exc))
            return None
        header = self._read_header(path, f)
        if header is None:
            return None
        f.close()
        ftype, gen, rec, end = header
        if ftype == fmt.T_RETIRED:
            if not self._readonly:
                compat.remove(path)
            return None
        seg = Segment(key, path, gen, rec.get("seq", 0), kind)
        seg.start = seg.end = end
        return seg

    def _journal_segments(self):
        found = []
        for name in self._listdir(self.seg_dir):
            if len(name) != 8 or not name.isdigit():
                continue
            seg = self._open_segment(self.seg_dir + "/" + name, int(name), "j")
            if seg is not None:
                found.append(seg)
                self._seq = max(self._seq, seg.seq)
        found.sort(key=lambda s: s.seq)
        return found

    def _replay(self, seg):
        size = compat.file_size(seg.path)
        with open(seg.path, "rb") as f:
            reader = fmt.SegmentReader(f, size, seg.gen, seg.start)
            for ftype, tag, pos, length, payload in reader.frames():
                self._apply(seg, ftype, tag, pos, length, payload)
            seg.end = reader.end
            for damage in reader.damage:
                self._report_damage(seg, f, damage)

    def _report_damage(self, seg, f, damage):
        start, stop, ftype, tag = damage
        if stop < seg.end or seg.end == seg.start:
            seg.skips[start] = stop
        base = ("seg-%08d" % seg.key) if seg.kind == "j" else ("in-" + seg.path.rsplit("/", 1)[1])
        name = "%s-%d-%d" % (base, seg.gen, start)
        if self._readonly or not self._copy_range(f, start, stop, name):
            return
        known = "" if tag is None else ", queue ID ending " + fmt.tag_text(tag)
        self._log("warning", "%s: damaged data at offset %d (%d bytes, frame type %d%s) saved to corrupt/%s" % (
            seg.path, start, stop - start, ftype or 0, known, name))

    def _adopt(self, name):
        seg = self._open_segment(self.incoming_dir + "/" + name, self._in_key - 1, "i")
        if seg is None:
            return 0
        self._in_key -= 1
        before = self._index.count
        self._segs[seg.key] = seg
        self._replay(seg)
        self._chunk_counts = {}
        if not seg.refs:
            del self._segs[seg.key]
            if not self._readonly:
                self._quarantine(seg.path, "in-" + name, "no loadable message in incoming file")
        return self._index.count - before

    def _apply(self, seg, ftype, tag, pos, length, payload):
        if ftype == fmt.T_CHUNK:
            chunk = fmt.parse_chunk(payload)
            self._count_chunk(tag, chunk[0] if chunk else None)
            return
        rec = fmt.decode_record(payload)
        if rec is None:
            self._log("warning", "%s: unreadable record at offset %d ignored" % (seg.path, pos))
            return
        if ftype != fmt.T_ENVELOPE and not isinstance(rec.get("id"), str):
            return
        if ftype == fmt.T_ENVELOPE:
            self._apply_envelope(seg, tag, pos, length, rec)
        elif ftype == fmt.T_DONE:
            self._finish(rec.get("id"), seg)
        elif ftype in (fmt.T_STATE, fmt.T_HOLD):
            found = self._find(rec.get("id"))
            if found is not None and ftype == fmt.T_STATE:
                self._set_state(found, rec, seg, pos)
            elif found is not None:
                self._set_held(found, bool(rec.get("h")), seg)

    def _count_chunk(self, tag, number):
        count = self._chunk_counts.get(tag)
        if number == 0:
            self._chunk_counts[tag] = 1
        elif count is not None and count == number:
            self._chunk_counts[tag] = count + 1
        else:
            self._chunk_counts[tag] = -1

    def _apply_envelope(self, seg, tag, pos, length, rec):
        msg = self._message_from(rec, tag, seg)
        if msg is None:
            self._log("warning", "%s: malformed envelope at offset %d ignored" % (seg.path, pos))
            return
        msg.env_seg, msg.env_pos = seg.key, pos
        msg.env_end = pos + fmt.HEAD_SIZE + length
        if self._find(msg.id) is not None or msg.id in self._damaged:
            self._log("error", "%s: duplicate queue ID in %s ignored" % (msg.id, seg.path))
            return
        if self._chunk_counts.pop(tag, 0) != msg.nchunks:
            self._damaged[msg.id] = msg
            return
        try:
            added = self._index_add(msg)
        except (ValueError, TypeError, OverflowError):
            added = False
        if not added:
            self._log("error", "%s: envelope in %s cannot be indexed; ignored" % (msg.id, seg.path))

    def _settle_damaged(self):
        for queue_id in list(self._damaged):
            msg = self._damaged[queue_id]
            name = self.corrupt_dir + "/" + queue_id
            try:
                if not compat.exists(name):
                    self._salvage(msg, name)
                seg, _ = self._append(fmt.T_DONE, msg.tag, (fmt.record({"id": queue_id, "why": "corrupt"}),))
            except OSError as exc:
                self._log("error", "%s: cannot move to corrupt/: %s" % (queue_id, exc))
                continue
            self._finish(queue_id, seg)
            self._log("warning", "%s: from=<%s>, size=%d: body unreadable; moved to corrupt/%s" % (
                queue_id, msg.sender, msg.size, queue_id))

    def _salvage(self, msg, name):
        with open(name, "wb") as out:
            out.write(fmt.record(self._envelope(msg)))
            for data in self._chunks(msg, False):
                out.write(data)

    def inject(self, sender, recipients, chunks, info=None):
        """Queue a message from another process (sync; no daemon needed): writes a
        complete segment into incoming/ (tmp + fsync + rename + dir sync)."""
        for folder in (self.path, self.incoming_dir, self.tmp_dir):
            compat.makedirs(folder)
        queue_id, tag = fmt.new_queue_id(compat.wall_time())
        tmp = self.tmp_dir + "/" + queue_id
        try:
            with open(tmp, "wb") as f:
                gen, size, nchunks, first = self._write_standalone(f, tag, chunks)
                msg = Message(queue_id, tag, sender, [Recipient(a) for a in recipients],
                              int(compat.wall_time()), size, info)
                msg.nchunks, msg.segs, msg.first, msg.env_seg = nchunks, [0], first, 0
                payload = fmt.record(self._envelope(msg))
                write_all(f, fmt.frame_head(fmt.T_ENVELOPE, gen, tag, (payload,)) + payload)
                compat.fsync_file(f)
            compat.commit_file(tmp, self.incoming_dir + "/" + queue_id, self.incoming_dir)
        except OSError as exc:
            compat.remove(tmp)
            if compat.is_no_space(exc):
                raise SpoolFull("no space left on device")
            raise
        return queue_id

    def _write_standalone(self, f, tag, chunks):
        gen = fmt.new_generation()
        payload = fmt.header_payload(0, 0, "i")
        write_all(f, fmt.frame_head(fmt.T_HEADER, gen, 0, (payload,)) + payload)
        first = fmt.HEAD_SIZE + len(payload)
        size = nchunks = 0
        for data in chunks:
            mv = memoryview(data)
            while len(mv):
                piece = mv[:self.chunk_size]
                free = self._free_space()
                if free is not None and free < self.min_free_space + len(piece):
                    raise SpoolFull("insufficient free space in the queue file system")
                parts = (fmt.chunk_prefix(nchunks, len(piece)), piece)
                write_all(f, fmt.frame_head(fmt.T_CHUNK, gen, tag, parts))
                for part in parts:
                    write_all(f, part)
                nchunks += 1
                size += len(piece)
                mv = mv[len(piece):]
        return gen, size, nchunks, first

    def scan_incoming(self):
        """Adopt new files in incoming/; returns the number of messages adopted."""
        self._ready()
        adopted = 0
        known = [seg.path for seg in self._segs.values() if seg.kind == "i"]
        for name in sorted(self._listdir(self.incoming_dir)):
            if (self.incoming_dir + "/" + name) not in known:
                adopted += self._adopt(name)
        return adopted

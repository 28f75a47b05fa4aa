# meta1lite.spool.recovery - loading the spool from disk: startup replay,
# quarantine, adopting incoming/ files, and inject() (writing one for another
# process).
#
# Owns: replaying segment files into the index and the journal, adopting incoming/
# files, saving damaged bytes and unreadable messages to corrupt/ with a log line,
# finding the messages whose bodies do not verify (the Spool keeps them until
# salvaged), and writing a complete standalone segment into incoming/.
# Must never: raise out of recover() for bad bytes on disk, append to an incoming
# file, or write anything when read-only; keep state in a Recovery or in this module
# beyond one call: a Spool makes a Recovery for each call and hands it what lasts
# (the damaged messages; the journal numbers the incoming files), and on a board
# (frozen code: heap.drop_one_shot) drops this start-up module after the call.
# Shared code: MicroPython and CPython.
import os

from meta1lite import compat, durable
from meta1lite.const import const
from meta1lite.durable import write_all
from meta1lite.spool import format as fmt
from meta1lite.spool.message import (
    SpoolFull,
    arriving,
    envelope_record,
    full_if_no_space,
    log,
    message_from_envelope,
)
from meta1lite.spool.segment import Segment
from meta1lite.spool.space import low_space

FAT = "VfsFat"          # durable.mount_type() of a FAT filesystem

_TORN_HEADER = const(128)       # a segment file this small with no valid header: torn creation
LOG_PICKUP = const("sendmail")  # logs as Postfix's pickup: its uid= line counts as received
_STAT_UID = const(4)            # os.stat()[4]: the owner (0 where the runtime cannot tell)


def listdir(path):
    """The names in a directory; [] if it cannot be read."""
    try:
        return os.listdir(path)
    except OSError:
        return []


def owner_uid(path):
    """The uid owning a file (who injected it); 0 if the runtime cannot tell."""
    try:
        return os.stat(path)[_STAT_UID]
    except (OSError, IndexError, TypeError):
        return 0


class Recovery:
    """Loads the spool's files into its journal and index: recover() once at
    startup, scan_incoming() for files injected later; inject() writes one. damaged:
    the Spool's dict of the messages whose chunks do not all verify, by queue ID."""

    def __init__(self, path, journal, index, chunk_size, min_free_space, damaged,
                 readonly):
        self.path = path
        self.incoming_dir = path + "/" + fmt.INCOMING_DIR
        self.corrupt_dir = path + "/corrupt"
        self.tmp_dir = path + "/tmp"
        self.journal = journal
        self.index = index
        self.chunk_size = chunk_size
        self.min_free_space = min_free_space
        self.readonly = readonly
        self.damaged = damaged
        self._chunk_counts = {}     # tag -> chunks seen in order (-1: a gap), while replaying
        self._torn = []             # (segment, file size) ending in a cut frame, while replaying
        self._adopted = []          # (id, sender, size, nrcpt, uid) from incoming/, not yet logged

    # --- corrupt/ ----------------------------------------------------------------------

    def _quarantine(self, path, name, why):
        target = self.corrupt_dir + "/" + name
        while durable.exists(target):
            target += "_"
        try:
            durable.rename(path, target)
        except OSError as exc:
            log("error", "cannot move %s to corrupt/: %s" % (path, exc))
            return
        log("warning", "%s: %s; moved to corrupt/%s" % (path, why, target.rsplit("/", 1)[1]))

    def _copy_range(self, f, start, stop, name):
        target = self.corrupt_dir + "/" + name
        if durable.exists(target):
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
            durable.fsync_file(out)
        durable.sync_new_entries(self.corrupt_dir)
        return True

    # --- startup -----------------------------------------------------------------------

    def recover(self):
        """Spool.recover(): load the files, once, at startup (read-only if this
        Recovery was made so); returns the number of live messages."""
        if not self.readonly:
            self._warn_fat()
            for folder in (self.path, self.journal.seg_dir, self.incoming_dir, self.corrupt_dir,
                           self.tmp_dir):
                durable.makedirs(folder)
            self._clear_tmp()
        for name in sorted(listdir(self.incoming_dir)):
            self._adopt(name)
        found = self._journal_segments()
        for seg in found:
            self.journal.segs[seg.key] = seg
        for seg in found:
            self._replay(seg)
        self._report_torn(found)
        self._chunk_counts = {}
        if self.readonly:
            return self.index.count
        self.journal.start(found)
        self._settle_damaged()
        self.journal.prepare_next()
        self.journal.collect()
        self.journal.sync_now()
        self._log_adopted(True)
        log("info", "recovered %d messages (%d bytes) from %s" % (
            self.index.count, self.index.live_bytes, self.path))
        return self.index.count

    def _warn_fat(self):
        # stm32 formats its internal flash FAT: no journal, and a rename there is a
        # remove then a rename, so a power cut can cost queued mail
        if durable.mount_type(self.path) == FAT:
            log("warning", "%s is on a FAT filesystem: a power cut can damage the queue; "
                "format the flash LittleFS2 (boards/nucleo-h743zi/README.md)" % self.path)

    def _clear_tmp(self):
        for name in listdir(self.tmp_dir):
            durable.remove(self.tmp_dir + "/" + name)
            log("info", "removed orphan temporary tmp/%s" % name)

    def _read_header(self, path, f, newest=True):
        """(type, gen, record, end) of a segment file; None (after dealing with it).
        newest: no segment file was created after it, so a short file without a
        header may be its creation torn (removed); any other is damage (corrupt/)."""
        size = durable.file_size(path)
        status, frame = fmt.read_frame(f, 0, size, None)
        if status == fmt.OK:
            f.seek(0)
            gen = fmt.parse_head(f.read(fmt.HEAD_SIZE))[1]
            rec = fmt.decode_record(frame[2]) if frame[0] == fmt.T_HEADER else {}
            if frame[0] == fmt.T_RETIRED or (rec is not None and rec.get("m") == fmt.SEGMENT_MARK
                                             and isinstance(rec.get("seq"), int)):
                return frame[0], gen, rec, fmt.HEAD_SIZE + len(frame[2])
        f.close()
        if self.readonly:
            return None
        if newest and size < _TORN_HEADER and status != fmt.DAMAGED:
            durable.remove(path)
            log("info", "%s: removed (segment creation never completed)" % path)
        else:
            kind = "in-" if path.startswith(self.incoming_dir + "/") else "seg-"
            why = "unreadable segment header" if size else "empty segment (its messages are lost)"
            self._quarantine(path, kind + path.rsplit("/", 1)[1], why)
        return None

    def _open_segment(self, path, key, kind, newest=True):
        """A Segment for a file, or None if it is retired/unreadable (handled)."""
        try:
            f = open(path, "rb")
        except OSError as exc:
            if kind == "j" and not self.readonly:
                # without it the journal would recycle segments its messages still
                # need (and could give a new segment its number): no start at all
                raise OSError(compat.errno_of(exc), "%s: cannot open (%s): the queue is not "
                              "started; check the storage, or move the file aside to start "
                              "without its messages" % (path, exc))
            log("error", "%s: cannot open: %s" % (path, exc))
            return None
        header = self._read_header(path, f, newest)
        if header is None:
            return None
        f.close()
        ftype, gen, rec, end = header
        if ftype == fmt.T_RETIRED:
            if not self.readonly:
                durable.remove(path)
            return None
        seg = Segment(key, path, gen, rec.get("seq", 0), kind)
        seg.start = seg.end = end
        return seg

    def _journal_segments(self):
        found = []
        names = [name for name in listdir(self.journal.seg_dir)
                 if len(name) == 8 and name.isdigit()]          # seg/NNNNNNNN
        top = max(names) if names else None     # a new segment takes the highest number
        for name in names:
            seg = self._open_segment(self.journal.seg_dir + "/" + name, int(name), "j",
                                     name == top)
            if seg is not None:
                found.append(seg)
        found.sort(key=lambda s: s.seq)
        return found

    # --- replay ------------------------------------------------------------------------

    def _replay(self, seg):
        size = durable.file_size(seg.path)
        with open(seg.path, "rb") as f:
            reader = fmt.SegmentReader(f, size, seg.gen, seg.start)
            for ftype, tag, pos, length, payload in reader.frames():
                self._apply(seg, ftype, tag, pos, length, payload)
            seg.end = reader.end
            for damage in reader.damage:
                self._report_damage(seg, f, damage)
            if fmt.read_frame(f, seg.end, size, seg.gen)[0] == fmt.TORN:
                self._torn.append((seg, size))

    def _report_torn(self, found):
        # a torn last frame is a normal end only in the newest segment holding data
        # (an append cut by a crash); in an older one the file lost its end
        last = None
        for seg in found:
            if seg.end > seg.start:
                last = seg
        for seg, size in self._torn:
            if seg is last or self.readonly:
                continue
            name = "seg-%08d-%d-%d-truncated" % (seg.key, seg.gen, seg.end)
            with open(seg.path, "rb") as f:
                self._copy_range(f, seg.end, size, name)
            log("warning", "%s: truncated at offset %d (%d bytes of a cut frame): the messages"
                " written after it are lost; saved to corrupt/%s" % (
                    seg.path, seg.end, size - seg.end, name))
        self._torn = []

    def _report_damage(self, seg, f, damage):
        start, stop, ftype, tag = damage
        if stop < seg.end or seg.end == seg.start:
            seg.skips[start] = stop
        base = ("seg-%08d" % seg.key) if seg.kind == "j" else ("in-" + seg.path.rsplit("/", 1)[1])
        name = "%s-%d-%d" % (base, seg.gen, start)
        if self.readonly or not self._copy_range(f, start, stop, name):
            return
        known = "" if tag is None else ", queue ID ending " + fmt.tag_text(tag)
        log("warning", "%s: damaged data at offset %d (%d bytes, frame type %d%s) saved to corrupt/%s" % (
            seg.path, start, stop - start, ftype or 0, known, name))

    def _apply(self, seg, ftype, tag, pos, length, payload):
        if ftype == fmt.T_CHUNK:
            chunk = fmt.parse_chunk(payload)
            self._count_chunk(tag, chunk[0] if chunk else None)
            return
        rec = fmt.decode_record(payload)
        if rec is None:
            log("warning", "%s: unreadable record at offset %d ignored" % (seg.path, pos))
            return
        if ftype == fmt.T_ENVELOPE:
            self._apply_envelope(seg, tag, pos, length, rec)
        elif not isinstance(rec.get("id"), str):
            return
        elif ftype == fmt.T_DONE:
            self._finish(rec["id"], seg)
        elif ftype in (fmt.T_STATE, fmt.T_HOLD):
            found = self.index.find_id(rec["id"])
            if found is not None and ftype == fmt.T_STATE:
                self.index.set_state(found, rec, seg, pos)
            elif found is not None:
                self.index.set_held(found, bool(rec.get("h")), seg)

    def _finish(self, queue_id, seg):
        """A done record for queue_id is in seg: a live message leaves the index, a
        damaged one is forgotten."""
        if self.index.finish(queue_id, seg):
            return
        msg = self.damaged.pop(queue_id, None)
        if msg is not None:
            self.journal.tombstone(seg, msg.env_seg)

    def _count_chunk(self, tag, number):
        count = self._chunk_counts.get(tag)
        if number == 0:
            self._chunk_counts[tag] = 1
        elif count is not None and count == number:
            self._chunk_counts[tag] = count + 1
        else:
            self._chunk_counts[tag] = -1

    def _apply_envelope(self, seg, tag, pos, length, rec):
        msg = message_from_envelope(rec, tag, seg.key)
        if msg is None:
            log("warning", "%s: malformed envelope at offset %d ignored" % (seg.path, pos))
            return
        msg.env_seg, msg.env_pos = seg.key, pos
        msg.env_end = pos + fmt.HEAD_SIZE + length
        if self.index.find_id(msg.id) is not None or msg.id in self.damaged:
            log("error", "%s: duplicate queue ID in %s ignored" % (msg.id, seg.path))
            return
        if self._chunk_counts.pop(tag, 0) != msg.nchunks:
            self.damaged[msg.id] = msg
            return
        try:
            added = self.index.add_message(msg)
        except (ValueError, TypeError, OverflowError):
            added = False
        if not added:
            log("error", "%s: envelope in %s cannot be indexed; ignored" % (msg.id, seg.path))
        elif seg.kind == "i":
            self._adopted.append((msg.id, msg.sender, msg.size, len(msg.recipients),
                                  owner_uid(seg.path)))
        elif isinstance(msg.info, dict) and isinstance(msg.info.get("pickup"), int):
            # committed by `meta1lite sendmail` while no daemon ran: logged as adopted
            self._adopted.append((msg.id, msg.sender, msg.size, len(msg.recipients),
                                  msg.info["pickup"]))

    def _settle_damaged(self):
        for queue_id in list(self.damaged):
            msg = self.damaged[queue_id]
            name = self.corrupt_dir + "/" + queue_id
            try:
                if not durable.exists(name):
                    self._salvage(msg, name)
                seg, _ = self.journal.append_record(fmt.T_DONE, msg.tag, {"id": queue_id, "why": "corrupt"})
            except OSError as exc:
                log("error", "%s: cannot move to corrupt/: %s" % (queue_id, exc))
                continue
            self._finish(queue_id, seg)
            log("warning", "%s: from=<%s>, size=%d: body unreadable; moved to corrupt/%s" % (
                queue_id, msg.sender, msg.size, queue_id))

    def _salvage(self, msg, name):
        # durable before its done record: after a power cut a partial copy would stand
        # in for the salvage (a copy that exists is not made again)
        body = self.journal.chunks(msg, False)
        try:
            with open(name, "wb") as out:
                out.write(fmt.record(envelope_record(msg)))
                for data in body:
                    out.write(data)
                durable.fsync_file(out)
        finally:
            body.close()        # a full flash cuts it short: see journal.chunks
        durable.sync_new_entries(self.corrupt_dir)

    # --- incoming/ ---------------------------------------------------------------------

    def _adopt(self, name):
        seg = self._open_segment(self.incoming_dir + "/" + name, self.journal.in_key - 1, "i")
        if seg is None:
            return 0
        self.journal.in_key -= 1
        before = self.index.count
        self.journal.segs[seg.key] = seg
        self._replay(seg)
        self._chunk_counts = {}
        if not seg.refs:
            del self.journal.segs[seg.key]
            if not self.readonly:
                self._quarantine(seg.path, "in-" + name, "no loadable message in incoming file")
        return self.index.count - before

    def scan_incoming(self, names):
        """Spool.scan_incoming(): adopt these new files of incoming/; returns the
        number of messages adopted."""
        adopted = 0
        for name in sorted(names):
            adopted += self._adopt(name)
        self._log_adopted(False)
        return adopted

    def _log_adopted(self, restart):
        """Postfix's pickup and qmgr lines for the messages just adopted that are still
        live. restart: at startup, a message with delivery attempts was adopted (and
        logged as received) by an earlier run: only its queue line is written again."""
        adopted, self._adopted = self._adopted, []
        if self.readonly:
            return
        for queue_id, sender, size, nrcpt, uid in adopted:
            handle = self.index.find_id(queue_id)
            if handle is None:
                continue
            if not (restart and any(self.index.states(handle)[1])):
                compat.log.log("info", LOG_PICKUP, "%s: uid=%d from=<%s>" % (queue_id, uid, sender))
            log("info", "%s: from=<%s>, size=%d, nrcpt=%d (queue active)" % (
                queue_id, sender, size, nrcpt))

    def inject(self, sender, recipients, chunks, info=None):
        """Spool.inject(): write a complete standalone segment into incoming/."""
        for folder in (self.path, self.incoming_dir, self.tmp_dir):
            durable.makedirs(folder)
        queue_id, tag = fmt.new_queue_id(compat.wall_time())
        tmp = self.tmp_dir + "/" + queue_id
        try:
            with open(tmp, "wb") as f:
                gen, size, nchunks, first = self._write_standalone(f, tag, chunks)
                msg = arriving(queue_id, tag, sender, recipients, size, info, nchunks, [0], first)
                write_all(f, fmt.frame(fmt.T_ENVELOPE, gen, tag, fmt.record(envelope_record(msg))))
                durable.fsync_file(f)
            durable.commit_file(tmp, self.incoming_dir + "/" + queue_id, self.incoming_dir)
        except OSError as exc:
            durable.remove(tmp)
            raise full_if_no_space(exc)
        except BaseException:       # SpoolFull (low space), MemoryError: no partial file left
            durable.remove(tmp)
            raise
        return queue_id

    def _write_standalone(self, f, tag, chunks):
        gen = fmt.new_generation()
        header = fmt.header_payload(0, 0, "i")
        write_all(f, fmt.frame(fmt.T_HEADER, gen, 0, header))
        size = nchunks = 0
        for data in chunks:
            mv = memoryview(data)
            while len(mv):
                piece = mv[:self.chunk_size]
                reason = low_space(self.path, self.min_free_space, len(piece))
                if reason is not None:
                    raise SpoolFull(reason)
                parts = (fmt.chunk_prefix(nchunks, len(piece)), piece)
                write_all(f, fmt.frame_head(fmt.T_CHUNK, gen, tag, parts))
                for part in parts:
                    write_all(f, part)
                nchunks += 1
                size += len(piece)
                mv = mv[len(piece):]
        return gen, size, nchunks, fmt.HEAD_SIZE + len(header)

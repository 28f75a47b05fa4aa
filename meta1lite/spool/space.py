# meta1lite.spool.space - room on the queue's file system: the free-space check new
# mail must pass (min_free_space), and the record reserve (SPOOL/seg.reserve) that
# keeps room for state and done records when the file system fills anyway.
# Owns: when space is low and when the reserve is written and given back. Must
# never: refuse a delivery record for lack of space while the reserve exists.
# Shared code: MicroPython and CPython.
from meta1lite import compat, durable
from meta1lite.durable import write_all
from meta1lite.spool import format as fmt
from meta1lite.spool.message import log

RESERVE_CHUNK = compat.IO_CHUNK     # bytes per write when the record reserve is filled
RESERVED_FOR = (fmt.T_STATE, fmt.T_DONE, fmt.T_HOLD)    # frames that may spend it


def low_space(path, min_free_space, size):
    """The refusal reason if size more bytes would leave less than min_free_space
    bytes free in the file system holding path, else None (also when unknown)."""
    try:
        free = durable.free_space(path)
    except (OSError, AttributeError):
        return None
    if free is not None and free < min_free_space + size:
        return "insufficient free space in the queue file system"
    return None


class RecordReserve:
    """SPOOL/seg.reserve: record_reserve bytes written ahead, given back when an append
    of a delivery record finds the file system full (another process may have filled
    it: min_free_space cannot stop that), so that state and done records still fit;
    written again once twice its size is free. Size 0: none."""

    def __init__(self, path, size):
        self.path = path
        self.size = size
        self.present = False

    def fill(self):
        """Write the reserve if it is missing and there is room for it twice."""
        if self.present or self.size <= 0:
            return
        if self._complete() or low_space(self.path.rsplit("/", 1)[0], self.size, self.size):
            return
        try:
            self._write()
            self.present = True
        except OSError as exc:
            durable.remove(self.path)
            log("warning", "cannot write the record reserve: %s" % exc)

    def _complete(self):
        # written by an earlier run (flash: no rewrite at each start)
        try:
            self.present = durable.file_size(self.path) == self.size
        except OSError:
            self.present = False
        return self.present

    def _write(self):
        zeros = memoryview(bytes(min(RESERVE_CHUNK, self.size)))
        with open(self.path, "wb") as f:
            left = self.size
            while left > 0:
                write_all(f, zeros[:left])      # a memoryview slice: no copy
                left -= len(zeros)
            durable.fsync_file(f)

    def spend(self):
        """Give the reserve back to the file system; True if there was one."""
        if self.size <= 0 or not durable.exists(self.path):
            return False
        durable.remove(self.path)
        self.present = False
        log("warning", "queue file system full: the record reserve is in use")
        return True

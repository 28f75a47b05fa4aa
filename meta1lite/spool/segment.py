# meta1lite.spool.segment - one segment file: the Segment record (what the journal
# and recovery know of a file), and the file operations on one: open for in-place
# writes, open and close (to measure a handle), close quietly, read a body chunk into
# a reused buffer.
# Owns: nothing but these. Must never: decide when a segment is written, synced or
# freed (the journal does), or read a frame's meaning (format.py, the index).
# Shared code: MicroPython and CPython.
from meta1lite import compat


def open_rw(path):
    """Open an existing file for in-place writes, unbuffered where possible."""
    try:
        return open(path, "r+b", buffering=0)
    except TypeError:
        return open(path, "r+b")


def open_and_close(path):
    """The handle of path, opened and closed again (heap.allocated_by measures it)."""
    f = open(path, "rb")
    f.close()
    return f


def close_quietly(seg):
    """Close a segment's handle (if open) and forget it; a failing close is ignored.
    Returns the closed handle (None if there was none)."""
    f, seg.f = seg.f, None
    if f is not None:
        try:
            f.close()
        except OSError:
            pass
    return f


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


def read_chunk(f, size, buf):
    """size bytes from f, into buf (reused): a full chunk as buf itself, a short
    (last) one as a view of it on MicroPython (a new bytes object each message
    fragments a board's heap); a new bytes object where buf does not fit."""
    if buf is None or size > len(buf) or (size < len(buf) and not compat.MICROPYTHON):
        return f.read(size)
    view = buf if size == len(buf) else memoryview(buf)[:size]
    got = f.readinto(view)
    if got != size:
        return bytes(buf[:got or 0])
    return view

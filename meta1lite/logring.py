# meta1lite.logring - the recent log lines kept in memory for `meta1lite status`.
#
# Owns: one preallocated bytearray that log lines are copied into, oldest
# overwritten first. A list of line strings would keep ~50 small objects alive for
# a few messages each, allocated among the sessions' buffers: on a board's heap
# they pin holes that a 1K buffer then cannot find (fragmentation). Must never:
# allocate per line beyond the transient encoding, or grow.
# Runs on MicroPython and CPython.

from meta1lite.const import const

RING_BYTES = const(3072)    # bytes of recent log text kept (10-25 lines) until the
                            # configuration sizes the ring (log_ring)
_NL = 10


class LogRing:
    """A fixed-size circular buffer of text lines."""

    def __init__(self, size=RING_BYTES):
        self.buf = bytearray(size)
        self.pos = 0            # where the next line is written
        self.wrapped = False    # the buffer has been filled once

    def append(self, line):
        """Keep `line` (str, without newline); older text is overwritten. A ring of
        size 0 keeps nothing."""
        if not self.buf:
            return
        data = line.encode()
        if len(data) >= len(self.buf):          # cut at a character, UTF-8 is <= 4 bytes
            data = line[:(len(self.buf) - 1) // 4].encode()
        self._put(data)
        self._put(b"\n")

    def _put(self, data):
        size = len(self.buf)
        first = min(len(data), size - self.pos)
        self.buf[self.pos:self.pos + first] = data[:first]
        rest = len(data) - first
        if rest:
            self.buf[:rest] = data[first:]
            self.wrapped = True
        self.pos = (self.pos + len(data)) % size
        if self.pos == 0 and not rest:
            self.wrapped = True

    def lines(self, count):
        """The last `count` whole lines, oldest first."""
        if self.wrapped:
            text = bytes(self.buf[self.pos:]) + bytes(self.buf[:self.pos])
            text = text[text.find(b"\n") + 1:]      # drop the partly overwritten line
        else:
            text = bytes(self.buf[:self.pos])
        found = text.decode().split("\n")[:-1]
        return found[len(found) - count:] if len(found) > count else found

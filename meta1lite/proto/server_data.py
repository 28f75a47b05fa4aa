# meta1lite/proto/server_data.py - the DATA stream of the SMTP server core
# (DataReader): end of data, dot-unstuffing, bare CR/LF, line and size limits.
# The rules are in smtp_server's header (DATA framing, SMTP smuggling).
# Owns: where the message ends and the bytes of each DataChunk. Must never:
# change the session state, emit events or replies (it returns what it found and
# ServerConnection acts on it), hold more than one chunk of the message, or copy
# input it does not hand on.
# Runs on MicroPython and CPython.
from meta1lite.const import const
from meta1lite.proto import replies

BARE_LF_REJECT = const("reject")
BARE_LF_NORMALIZE = const("normalize")
BARE_LF_MODES = (BARE_LF_REJECT, BARE_LF_NORMALIZE)

_CR, _LF, _DOT = 13, 10, 46
FAST_TRIES = 4      # fast-path attempts per read() (each counts CR/LF over the rest)


class DataReader:
    """One message's DATA stream -> unstuffed, CRLF-only chunks, up to the end dot.

    After read(): reading goes on at .pos; .finished is True once the final dot
    was read; .error is the first fault (a replies tuple: the message is refused
    after the dot); .size counts the message after unstuffing."""

    def __init__(self, max_line, max_size, bare_lf, chunk):
        self.max_line = max_line
        self.max_size = max_size
        self.reject_bare = bare_lf == BARE_LF_REJECT
        self.chunk = chunk
        self.pos = 0
        self.finished = False
        self.error = None
        self.size = 0
        self._line_start = True
        self._line_len = 0
        self._out = _Pieces()

    def read(self, buf, pos):
        """Frame buf[pos:]: the message bytes found, at most chunk + 2 octets (maybe b"")."""
        end = len(buf)
        out = self._out
        out.reset(buf)
        room = self.chunk
        cr = lf = -2                      # the next CR and LF found (-1: none, -2: not looked)
        fast = FAST_TRIES
        while pos < end and room > 0 and not self.finished:
            if fast and self._line_start:
                fast -= 1
                start, pos = pos, self._lines(out, buf, pos, min(end, pos + room))
                room -= pos - start
                if pos >= end or room <= 0:
                    break
            if self._line_start and buf[pos] == _DOT:
                start, pos = pos, self._dot(buf, pos, end)
                if pos == start:
                    break
                continue
            self._line_start = False
            if -1 < cr < pos or cr == -2:
                cr = buf.find(b"\r", pos)
            if -1 < lf < pos or lf == -2:
                lf = buf.find(b"\n", pos)
            stop = _first(cr, lf)
            if stop < 0 or stop - pos >= room:
                take = min(end, pos + room)
                self._content(out, buf, pos, take)
                room -= take - pos
                pos = take
                continue
            self._content(out, buf, pos, stop)
            room -= stop - pos + 2
            pos = self._line_end(out, buf, stop, end)
            if pos == stop:
                break
        self.pos = pos
        return out.join()

    def _lines(self, out, buf, pos, limit):
        # The fast path: whole ordinary lines from a line start, found with one find()
        # each, taken as one run. Only where buf[pos:] up to its last CRLF before
        # limit has no bare CR or LF (as many CR, LF and CRLF); stops before a line
        # that starts with a dot or is too long (read()'s per-line path takes it).
        last = buf.rfind(b"\r\n", pos, limit) + 2
        if last < 2:
            return pos
        crlfs = buf.count(b"\r\n", pos, last)
        if buf.count(b"\r", pos, last) != crlfs or buf.count(b"\n", pos, last) != crlfs:
            return pos
        start, longest = pos, self.max_line - 2
        while pos < last and buf[pos] != _DOT:
            stop = buf.find(b"\r\n", pos, last)
            if stop - pos > longest:
                break
            pos = stop + 2
        if self.max_size and self.size + pos - start > self.max_size:
            return start        # the per-line path finds the line that goes over
        if pos > start:
            self._line_len = 0
            self._count(pos - start)
            if self.error is None:
                out.take(start, pos)
        return pos

    def _dot(self, buf, pos, end):
        """At a line start with '.': the position after it (pos itself: wait for more)."""
        if end - pos < 3 and b".\r\n".startswith(bytes(buf[pos:end])):
            return pos
        self._line_start = False
        if buf[pos + 1] == _CR and buf[pos + 2] == _LF:
            self.finished = True
            return pos + 3
        self._line_len += 1          # the stuffing dot counts towards the line length
        return pos + 1

    def _line_end(self, out, buf, stop, end):
        """At the CR or LF at `stop`: the position after the line end (stop: wait)."""
        if buf[stop] == _LF:
            self._newline(out, -1)
            return stop + 1
        if stop + 1 >= end:
            return stop
        if buf[stop + 1] == _LF:
            self._newline(out, stop)
            return stop + 2
        self._newline(out, -1)
        return stop + 1

    def _fault(self, reply):
        if self.error is None:
            self.error = reply

    def _content(self, out, buf, start, end):
        count = end - start
        if count <= 0:
            return
        self._line_len += count
        if self._line_len + 2 > self.max_line:
            self._fault(replies.DATA_LINE_TOO_LONG)
        self._count(count)
        if self.error is None:
            out.take(start, end)

    def _count(self, count):
        self.size += count
        if self.max_size and self.size > self.max_size:
            self._fault(replies.MESSAGE_TOO_BIG)

    def _newline(self, out, crlf_at):
        # crlf_at: where the CRLF is in the input; -1 for a bare CR or LF
        bare = crlf_at < 0
        self._line_len = 0
        if bare and self.reject_bare:
            self._fault(replies.BARE_NEWLINE)
            return
        self._line_start = not bare
        self._count(2)
        if self.error is None:
            if bare:
                out.add(b"\r\n")
            else:
                out.take(crlf_at, crlf_at + 2)


class _Pieces:
    """The output of one read(): runs of the input are kept as (start, end) and
    sliced once, so that a chunk of ordinary lines is one slice of the input, or the
    input itself (no allocation at all), not a slice per line joined: a board's
    fragmented heap has no room for a copy per read."""

    def __init__(self):
        self.reset(b"")

    def reset(self, buf):
        self.buf = buf
        self.parts = []
        self.start = self.end = -1

    def take(self, start, end):
        """Append buf[start:end]."""
        if start != self.end:
            self._close_run()
            self.start = start
        self.end = end

    def add(self, literal):
        """Append bytes that are not in the input."""
        self._close_run()
        self.parts.append(literal)

    def _close_run(self):
        if self.start < 0:
            return
        whole = self.start == 0 and self.end == len(self.buf)
        # part of the input: a view of it (a message's last chunk, ended by the dot
        # inside the read, was a copy of up to 1K on a board's fragmented heap)
        self.parts.append(self.buf if whole else memoryview(self.buf)[self.start:self.end])
        self.start = self.end = -1

    def join(self):
        """The bytes appended: the input, a view of it, or (several pieces) a new
        bytearray; valid until the input changes."""
        self._close_run()
        parts, self.parts, self.buf = self.parts, [], b""
        if len(parts) == 1:
            return parts[0]
        out = bytearray()
        for part in parts:
            out.extend(part)
        return out


def _first(a, b):
    if a < 0:
        return b
    if b < 0:
        return a
    return a if a < b else b

# meta1lite.streams - compat's streams half: reading with deadlines, writing in
# bounded pieces, opening and closing connections, socket options, where MicroPython's
# asyncio and CPython's differ.
# Owns: the one read buffer MicroPython's reads share, the deadlines' watcher task,
# TCP_NODELAY. Must never: parse what it reads or decide what to write (the protocol
# cores and the modules around them do), or keep a caller's buffer after returning.
# Shared code: MicroPython and CPython.
import time

from meta1lite import compat
from meta1lite.const import const

asyncio = compat.asyncio


def new_read_buffer(size=compat.READ_CHUNK):
    """A preallocated receive buffer for read_some()."""
    return bytearray(size)


async def read_some(reader, buf):
    """Read what is available (at most len(buf)); empty at end of stream. MicroPython:
    a memoryview of buf (no allocation per read), valid until buf is read into again;
    CPython: bytes."""
    if not compat.MICROPYTHON:
        return await reader.read(len(buf))
    while True:
        n = await reader.readinto(buf)
        if n is not None:   # None: a TLS socket that would block
            return memoryview(buf)[:n]


_SHARED_READ = []      # MicroPython: the one buffer of every read_now(), made at the first


def _shared_read_buffer():
    if not _SHARED_READ:
        _SHARED_READ.append(bytearray(compat.READ_CHUNK))
    return _SHARED_READ[0]


# MicroPython: a read's deadline without asyncio.wait_for, which made two tasks for
# every read it bounded (336 bytes for each idle session on the sim Pico W): the
# reading task waits on its socket alone, and one watcher task wakes at the nearest
# deadline and throws TimeoutError into a read still waiting (as Task.cancel throws
# CancelledError).
_WATCH_IDLE_S = const(60)  # the watcher's sleep while no read waits


class _Deadlines:
    def __init__(self):
        self.due = {}       # task -> compat.real_monotonic() second its read times out
        self.task = None    # the watcher
        self.queue = None   # the scheduler's queue it was made in (tests make new loops)
        self.wake = 0       # when the watcher wakes next (compat.real_monotonic seconds)

    def add(self, task, end):
        self.due[task] = end
        queue = asyncio.core._task_queue
        if self.task is None or self.task.done() or self.queue is not queue:
            self.queue, self.wake = queue, end
            self.task = asyncio.create_task(self._watch())
        elif end < self.wake:       # sooner than the watcher wakes: wake it then
            self.wake = end
            queue.remove(self.task)
            queue.push(self.task, time.ticks_add(time.ticks_ms(), _ms_until(end)))

    async def _watch(self):
        while True:
            try:
                self._check(compat.real_monotonic())
            except MemoryError:     # timed out at the next wake
                self.wake = compat.real_monotonic() + 1
            await asyncio.sleep_ms(_ms_until(self.wake))

    def _check(self, now):
        self.wake = _time_out_due(self.due, now, _time_out, now + _WATCH_IDLE_S)


def _time_out_due(due, now, time_out, wake):
    # both runtimes' deadlines: time_out(key) every read in due past its end (it acts
    # only on a read still waiting; the reader removes its entry); returns the nearest
    # end still to come, or wake if that is sooner (None: no bound)
    for key in due:
        end = due[key]
        if end <= now:
            time_out(key)
        elif wake is None or end < wake:
            wake = end
    return wake


def _ms_until(end):
    return max(0, int((end - compat.real_monotonic()) * 1000) + 1)


def _time_out(task):
    # throw TimeoutError into task if it still waits on its socket (not yet woken)
    core = asyncio.core
    if task.data is core._io_queue:
        exc = core.TimeoutError()
        core._io_queue.remove(task)
        core._task_queue.push(task)
        task.data = exc


_deadlines = _Deadlines()


def _readable(sock, end):
    # MicroPython: a generator (asyncio awaits it) that returns once sock is readable,
    # or raises TimeoutError at `end` (compat.real_monotonic seconds)
    task = asyncio.core.cur_task
    _deadlines.add(task, end)
    try:
        yield asyncio.core._io_queue.queue_read(sock)
    finally:
        _deadlines.due.pop(task, None)


async def read_now(reader, timeout_s):
    """Bytes from reader within timeout_s (a timeout error); empty at end of stream.
    MicroPython: a view of ONE buffer that every caller shares, read in the caller's
    own task once the socket is readable; valid until the caller's next await, so
    feed it to a core that copies it before awaiting anything (a buffer per session
    or delivery was 1K each held while it idled). CPython: bytes."""
    if not compat.MICROPYTHON:
        return await _read_within(reader, timeout_s)
    end = compat.real_monotonic() + timeout_s / compat.clock_scale()
    while True:     # as read_some: a TLS record not yet whole reads None, wait again
        await _readable(reader.s, end)
        buf = _shared_read_buffer()
        n = reader.s.readinto(buf)
        if n is not None:
            return memoryview(buf)[:n]


# CPython: a read's deadline without asyncio.timeout(), which made a Timeout, a timer
# in the loop's heap and its cancel for every read (about a tenth of the daemon's CPU
# under cProfile): one call_at per loop (kept on the loop) wakes at the nearest
# deadline and fails a read still waiting then with TimeoutError (its StreamReader's
# waiter; a read already woken by data returns it).
if not compat.MICROPYTHON:    # (a board's heap holds no class it never uses)
    class _ReadDeadlines:
        def __init__(self):
            self.due = {}       # StreamReader -> loop.time() its read times out
            self.timer = None   # the call_at of the nearest deadline

        def add(self, loop, reader, end):
            self.due[reader] = end
            if self.timer is None or end < self.timer.when():
                if self.timer is not None:
                    self.timer.cancel()
                self.timer = loop.call_at(end, self._check, loop)

        def _check(self, loop):
            wake = _time_out_due(self.due, loop.time(), _time_out_read, None)
            self.timer = None if wake is None else loop.call_at(wake, self._check, loop)

    def _time_out_read(reader):
        # the waiting read raises TimeoutError (none waits: woken already, its read
        # returns); the stream itself is not failed (a 421 is still drained after it)
        waiter, reader._waiter = reader._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(asyncio.TimeoutError())

    async def _read_within(reader, timeout_s):
        loop = asyncio.get_running_loop()
        deadlines = getattr(loop, "meta1lite_deadlines", None)
        if deadlines is None:
            deadlines = loop.meta1lite_deadlines = _ReadDeadlines()
        deadlines.add(loop, reader, loop.time() + timeout_s / compat.clock_scale())
        try:
            return await reader.read(compat.READ_CHUNK)
        finally:
            deadlines.due.pop(reader, None)


# CPython 3.12+'s transport queues the very object it is given when the socket is
# full (and drain() returns below its high-water mark): a caller's reused buffer is
# copied first, or the next body chunk read into it would be sent in its place.
# MicroPython's stream copies what the socket does not take.
TRANSPORT_KEEPS_BUFFERS = not compat.MICROPYTHON


async def write_all(writer, data):
    """Write data in WRITE_CHUNK pieces, draining after each (bounded buffering).
    The caller may reuse data's buffer once this returns."""
    if len(data) <= compat.WRITE_CHUNK:            # replies (bytes): no copy
        _write_piece(writer, data)
        await writer.drain()
        return
    mv = memoryview(data)
    for start in range(0, len(mv), compat.WRITE_CHUNK):
        writer.write(bytes(mv[start:start + compat.WRITE_CHUNK]))
        await writer.drain()


async def write_within(writer, data, timeout_s):
    """write_all() bounded by timeout_s (a timeout error). A piece the socket took at
    once, as a reply or a body chunk usually is, needs no drain and no timeout."""
    if len(data) > compat.WRITE_CHUNK:
        await compat.wait_for(write_all(writer, data), timeout_s)
        return
    _write_piece(writer, data)
    if _drain_due(writer):
        await compat.wait_for(writer.drain(), timeout_s)


def _write_piece(writer, data):
    # at most WRITE_CHUNK bytes, never leaving the caller's buffer queued
    if TRANSPORT_KEEPS_BUFFERS and not isinstance(data, bytes):
        data = bytes(data)
    writer.write(data)


def _drain_due(writer):
    # the socket left some, or the peer is gone (drain() raises it: a transport drops
    # what is written after the loss)
    if compat.MICROPYTHON:
        return writer.out_buf
    transport = writer.transport
    try:
        return transport.is_closing() or transport.get_write_buffer_size()
    except AttributeError:      # CPython 3.10's TLS transport, once the peer is gone
        return True


def _tcp_nodelay_option():
    # (level, option): lwIP's socket names its own TCP_NODELAY (TF_NODELAY, 0x40) and
    # ignores the level; the unix port names neither and takes Linux's numbers
    import socket
    return getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1)


IPPROTO_TCP, TCP_NODELAY = _tcp_nodelay_option()


def no_delay(sock):
    """TCP_NODELAY on a MicroPython socket, as CPython's asyncio sets it on every TCP
    stream: without it a body written in compat.READ_CHUNK pieces waits for the peer's
    delayed ACK (Nagle), ~40 ms a message on Linux. Ignored where unsupported."""
    try:
        sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
    except (AttributeError, OSError, TypeError, ValueError):
        pass


async def open_connection(host, port, ctx=None, server_hostname=None):
    """A client stream, with implicit TLS when ctx is given (port 465).

    Returns (reader, writer, early): MicroPython leaves the TLS handshake to the
    first read or write, and an SMTP client reads first, so one non-blocking read
    starts it here; `early` holds whatever that read got (b'' on CPython)."""
    if ctx is None:
        reader, writer = await asyncio.open_connection(host, port)
        if compat.MICROPYTHON:
            no_delay(getattr(writer, "s", None))
        return reader, writer, b""
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx,
                                                   server_hostname=server_hostname)
    sock = getattr(writer, "s", None)
    if not compat.MICROPYTHON or sock is None:
        return reader, writer, b""
    buf = _shared_read_buffer()     # copied below, before any await
    try:
        n = sock.readinto(buf)
    except compat.TLS_ERRORS:
        n = None                    # the error shows again at the first real read
    return reader, writer, bytes(buf[:n]) if n else b""


_CLOSE_WAIT_S = const(10)       # a peer that reads nothing holds a closing stream no longer


async def close_stream(writer):
    """Close a stream, ignoring errors from a peer that is already gone; one that
    does not take the unsent data within _CLOSE_WAIT_S is dropped (abort_stream)."""
    try:
        if compat.MICROPYTHON:             # its wait_closed() closes the socket, nothing to wait for
            forget_io_wait(writer.s)
            writer.close()
            await writer.wait_closed()
            return
        writer.close()
        await compat.wait_for(writer.wait_closed(), _CLOSE_WAIT_S)
    except Exception:  # noqa: BLE001 - closing must never raise
        abort_stream(writer)


def abort_stream(writer):
    """Drop a connection at once, its unsent data too (a peer that reads nothing)."""
    try:
        if compat.MICROPYTHON:             # Stream.close() closes nothing there
            forget_io_wait(writer.s)
            writer.s.close()
        else:
            writer.transport.abort()
    except Exception:  # noqa: BLE001 - dropping must never raise
        pass


def forget_io_wait(sock):
    """MicroPython: drop sock from asyncio's I/O queue. A MemoryError inside its
    IOQueue._enqueue (map entry made, poller.register failed) leaves sock mapped to
    a task that is not waiting on it; left there, a later socket with the same id or
    a retry corrupts the scheduler (seen: SIGSEGV under load). No-op elsewhere."""
    if not compat.MICROPYTHON:
        return
    import asyncio.core
    queue = asyncio.core._io_queue
    if queue.map.pop(id(sock), None) is not None:
        try:
            queue.poller.unregister(sock)
        except (OSError, KeyError, ValueError):
            pass


def peer_address(writer):
    """(host, port) of the peer of a stream, or ('?', 0)."""
    try:
        peer = writer.get_extra_info("peername")
    except (KeyError, AttributeError):
        peer = None
    if isinstance(peer, (bytes, bytearray)):   # MicroPython: a raw struct sockaddr
        import socket
        family, packed, port = socket.sockaddr(peer)[:3]
        peer = (socket.inet_ntop(family, packed), port)
    if not peer:
        return ("?", 0)
    return (str(peer[0]), int(peer[1]))

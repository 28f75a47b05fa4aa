# meta1lite.compat - the ONE place where MicroPython and CPython differ.
#
# Owns: the asyncio import, the clocks (replaceable by tests), random bytes, a
# process number, stream helpers (bounded reads, chunked writes, timeouts), errno
# classification, the CBOR codec choice and the logger; local times and OSError texts
# that read the same on both runtimes. Its halves: tls.py (TLS), durable.py (files:
# fsync, directory sync, atomic rename), heap.py (the MicroPython heap), process.py
# (watchdog, dropping root), listener.py (accepting), cli/host.py (the tools' uid,
# login name and blocking socket).
# Must never: hold protocol or queue logic, or import anything CPython-only at
# module level without a fallback.
import errno
import os
import sys
import time

from meta1lite.const import const
from meta1lite.logring import LogRing

try:
    import asyncio
except ImportError:  # very old MicroPython
    import uasyncio as asyncio

MICROPYTHON = sys.implementation.name == "micropython"

try:
    import cbor2 as _cbor2
except ImportError:
    _cbor2 = None

# Buffers of the I/O paths. On MicroPython they are small: a fragmented heap keeps
# finding 1 KB where it no longer has 4 KB in one piece (measured: deliveries failed
# "allocating 4096 bytes" on a 1 MB heap with a few hundred messages queued).
IO_CHUNK = 1024 if MICROPYTHON else 4096
WRITE_CHUNK = IO_CHUNK      # bytes per write+drain (MicroPython copies what the socket refuses)
READ_CHUNK = IO_CHUNK       # bytes per socket read
_CLOCK_SCALE_ENV = const("META1LITE_CLOCK_SCALE")  # tests: simulated seconds per real second


# --- clocks -----------------------------------------------------------------

class _TickClock:
    # MicroPython's seconds since boot from ticks_ms (which wrap): whole seconds and the
    # milliseconds since, small ints for 34 years (one count of milliseconds leaves the
    # small-int range after 12 days, then allocates a big int at every read). The float
    # it returns is 32-bit on rp2: whole seconds after 97 days, 8 s steps after 2^26 s
    # (2.1 years), 16 s after 4.3 years, 32 s after 8.5.
    def __init__(self):
        self.last = time.ticks_ms()
        self.seconds = 0
        self.ms = 0

    def read(self):
        now = time.ticks_ms()
        ms = self.ms + time.ticks_diff(now, self.last)
        self.last = now
        self.seconds += ms // 1000
        self.ms = ms % 1000
        return self.seconds + self.ms / 1000


_tick_clock = None if hasattr(time, "monotonic") else _TickClock()
_real_monotonic = time.monotonic if _tick_clock is None else _tick_clock.read


def set_uptime(seconds):
    """MicroPython: the real clock counts on from `seconds` since boot (the simulated
    board starts years on)."""
    if _tick_clock is not None:
        _tick_clock.seconds = seconds


def getenv(name):
    """os.getenv(name), or None where os has none (rp2, stm32: only the unix port
    has environment variables)."""
    return os.getenv(name) if hasattr(os, "getenv") else None


def real_monotonic():
    """Real seconds, never scaled by META1LITE_CLOCK_SCALE: the clock of socket
    deadlines (smtps command_timeout, min_data_rate), which asyncio waits in."""
    return _real_monotonic()


def _epoch_offset(gmtime):
    # seconds from 1970 to the port's epoch: stm32 counts time.time() from 2000
    # (MICROPY_EPOCH_IS_1970 unset); rp2, the unix port and CPython from 1970
    return UNIX_TO_2000_S if gmtime(0)[0] == 2000 else 0


UNIX_TO_2000_S = const(946684800)
EPOCH_OFFSET = _epoch_offset(time.gmtime)   # the relay's wall-clock times are Unix times


def _unix_time():
    return time.time() + EPOCH_OFFSET


def _broken_down(epoch, utc):
    # a Unix time as the port's (year, month, day, hour, minute, second, weekday, ...)
    at = int(epoch) - EPOCH_OFFSET
    return time.gmtime(at) if utc or not hasattr(time, "localtime") else time.localtime(at)


class _Clock:
    def __init__(self):
        self.scale = float(getenv(_CLOCK_SCALE_ENV) or 1)
        self.mono0 = _real_monotonic()
        self.wall0 = _unix_time()
        self.mono_fn = None
        self.wall_fn = None


_clock = _Clock()


def monotonic():
    """Seconds on a clock that never goes back; the scheduler's only clock."""
    if _clock.mono_fn:
        return _clock.mono_fn()
    return (_real_monotonic() - _clock.mono0) * _clock.scale


def wall_time():
    """Seconds since the Unix epoch, for people and lifetimes (may jump, e.g. NTP)."""
    if _clock.wall_fn:
        return _clock.wall_fn()
    if _clock.scale == 1:
        return _unix_time()
    return _clock.wall0 + monotonic()


def set_clock(monotonic_fn=None, wall_fn=None):
    """Replace the clocks (tests); call with no arguments to restore the real ones."""
    _clock.mono_fn = monotonic_fn
    _clock.wall_fn = wall_fn


HAS_THREADS = not MICROPYTHON  # worker threads for blocking work (CPython only)


async def in_thread(fn, *args):
    """fn(*args) in a worker thread, the event loop running meanwhile (CPython only;
    callers check HAS_THREADS and slice their work on MicroPython)."""
    return await asyncio.to_thread(fn, *args)


async def sleep(seconds):
    """Sleep `seconds` of (possibly simulated) monotonic time."""
    await asyncio.sleep(seconds / _clock.scale)


def format_time(epoch, utc=False):
    """'Nov 24 14:08:00' (syslog style) for a wall-clock time."""
    t = _broken_down(epoch, utc)
    return "%s %2d %02d:%02d:%02d" % (_MONTHS[t[1] - 1], t[2], t[3], t[4], t[5])


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def format_arrival(epoch):
    """'Mon Nov 24 14:08:00' in local time (mailq's arrival column)."""
    t = _broken_down(epoch, False)
    return "%s %s %02d %02d:%02d:%02d" % (_DAYS[t[6]], _MONTHS[t[1] - 1], t[2], t[3], t[4], t[5])


def rfc5322_date(epoch):
    """RFC 5322 Date: value in UTC, e.g. 'Tue, 24 Nov 2026 14:08:00 +0000'."""
    t = _broken_down(epoch, True)
    return "%s, %d %s %d %02d:%02d:%02d +0000" % (
        _DAYS[t[6]], t[2], _MONTHS[t[1] - 1], t[0], t[3], t[4], t[5])


# --- identity and randomness -----------------------------------------------

def urandom(n):
    """n random bytes from the OS (or the board's RNG)."""
    return os.urandom(n)


_PID = [None]


def _proc_pid():
    try:
        with open("/proc/self/stat", "rb") as f:
            return int(f.read(32).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def own_pid():
    """The real process id where the runtime can tell it, else None."""
    if hasattr(os, "getpid"):
        return os.getpid()
    return _proc_pid()


def getpid():
    """The process id (the unix port reads /proc); elsewhere (a board) a number
    fixed for this run."""
    if _PID[0] is None:
        _PID[0] = own_pid()
        if _PID[0] is None:
            _PID[0] = 1000 + int.from_bytes(urandom(2), "big") % 30000
    return _PID[0]


TLS_ERRORS = (OSError, ValueError) if MICROPYTHON else (OSError,)


# --- streams ----------------------------------------------------------------

def new_read_buffer(size=READ_CHUNK):
    """A preallocated receive buffer for read_some()."""
    return bytearray(size)


async def read_some(reader, buf):
    """Read what is available (at most len(buf)); empty at end of stream. MicroPython:
    a memoryview of buf (no allocation per read), valid until buf is read into again;
    CPython: bytes."""
    if not MICROPYTHON:
        return await reader.read(len(buf))
    while True:
        n = await reader.readinto(buf)
        if n is not None:   # None: a TLS socket that would block
            return memoryview(buf)[:n]


_SHARED_READ = []      # MicroPython: the one buffer of every read_now(), made at the first


def _shared_read_buffer():
    if not _SHARED_READ:
        _SHARED_READ.append(bytearray(READ_CHUNK))
    return _SHARED_READ[0]


# MicroPython: a read's deadline without asyncio.wait_for, which made two tasks for
# every read it bounded (336 bytes for each idle session on the sim Pico W): the
# reading task waits on its socket alone, and one watcher task wakes at the nearest
# deadline and throws TimeoutError into a read still waiting (as Task.cancel throws
# CancelledError).
_WATCH_IDLE_S = const(60)  # the watcher's sleep while no read waits


class _Deadlines:
    def __init__(self):
        self.due = {}       # task -> real_monotonic() second its read times out
        self.task = None    # the watcher
        self.queue = None   # the scheduler's queue it was made in (tests make new loops)
        self.wake = 0       # when the watcher wakes next (real_monotonic seconds)

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
                self._check(real_monotonic())
            except MemoryError:     # timed out at the next wake
                self.wake = real_monotonic() + 1
            await asyncio.sleep_ms(_ms_until(self.wake))

    def _check(self, now):
        self.wake = now + _WATCH_IDLE_S
        for task in self.due:
            end = self.due[task]
            if end <= now:
                _time_out(task)
            elif end < self.wake:
                self.wake = end


def _ms_until(end):
    return max(0, int((end - real_monotonic()) * 1000) + 1)


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
    # or raises TimeoutError at `end` (real_monotonic seconds)
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
    if not MICROPYTHON:
        return await wait_for(reader.read(READ_CHUNK), timeout_s)
    end = real_monotonic() + timeout_s / _clock.scale
    while True:     # as read_some: a TLS record not yet whole reads None, wait again
        await _readable(reader.s, end)
        buf = _shared_read_buffer()
        n = reader.s.readinto(buf)
        if n is not None:
            return memoryview(buf)[:n]


# CPython 3.12+'s transport queues the very object it is given when the socket is
# full (and drain() returns below its high-water mark): a caller's reused buffer is
# copied first, or the next body chunk read into it would be sent in its place.
# MicroPython's stream copies what the socket does not take.
TRANSPORT_KEEPS_BUFFERS = not MICROPYTHON


async def write_all(writer, data):
    """Write data in WRITE_CHUNK pieces, draining after each (bounded buffering).
    The caller may reuse data's buffer once this returns."""
    if len(data) <= WRITE_CHUNK:            # replies (bytes): no copy
        if TRANSPORT_KEEPS_BUFFERS and not isinstance(data, bytes):
            data = bytes(data)
        writer.write(data)
        await writer.drain()
        return
    mv = memoryview(data)
    for start in range(0, len(mv), WRITE_CHUNK):
        writer.write(bytes(mv[start:start + WRITE_CHUNK]))
        await writer.drain()


async def write_within(writer, data, timeout_s):
    """write_all() bounded by timeout_s (a timeout error). MicroPython: no task for
    the bound when the socket took a short reply at once, as it usually does."""
    if MICROPYTHON and len(data) <= WRITE_CHUNK:
        writer.write(data)
        if writer.out_buf:
            await wait_for(writer.drain(), timeout_s)
        return
    await wait_for(write_all(writer, data), timeout_s)


_TIMEOUT_CM = getattr(asyncio, "timeout", None)     # CPython 3.11+


async def wait_for(awaitable, timeout_s):
    """Await with a timeout in (simulated) seconds; raises asyncio.TimeoutError.
    CPython 3.11+: asyncio.timeout() around the await, no task per call (the reads
    of smtps and smtpc: a loop iteration fewer per read)."""
    if _TIMEOUT_CM is None:
        return await asyncio.wait_for(awaitable, timeout_s / _clock.scale)
    async with _TIMEOUT_CM(timeout_s / _clock.scale):
        return await awaitable


def _tcp_nodelay_option():
    # (level, option): lwIP's socket names its own TCP_NODELAY (TF_NODELAY, 0x40) and
    # ignores the level; the unix port names neither and takes Linux's numbers
    import socket
    return getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1)


IPPROTO_TCP, TCP_NODELAY = _tcp_nodelay_option()


def no_delay(sock):
    """TCP_NODELAY on a MicroPython socket, as CPython's asyncio sets it on every TCP
    stream: without it a body written in READ_CHUNK pieces waits for the peer's
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
        if MICROPYTHON:
            no_delay(getattr(writer, "s", None))
        return reader, writer, b""
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx,
                                                   server_hostname=server_hostname)
    sock = getattr(writer, "s", None)
    if not MICROPYTHON or sock is None:
        return reader, writer, b""
    buf = _shared_read_buffer()     # copied below, before any await
    try:
        n = sock.readinto(buf)
    except TLS_ERRORS:
        n = None                    # the error shows again at the first real read
    return reader, writer, bytes(buf[:n]) if n else b""


_CLOSE_WAIT_S = const(10)       # a peer that reads nothing holds a closing stream no longer


async def close_stream(writer):
    """Close a stream, ignoring errors from a peer that is already gone; one that
    does not take the unsent data within _CLOSE_WAIT_S is dropped (abort_stream)."""
    try:
        if MICROPYTHON:             # its wait_closed() closes the socket, nothing to wait for
            forget_io_wait(writer.s)
            writer.close()
            await writer.wait_closed()
            return
        writer.close()
        await wait_for(writer.wait_closed(), _CLOSE_WAIT_S)
    except Exception:  # noqa: BLE001 - closing must never raise
        abort_stream(writer)


def abort_stream(writer):
    """Drop a connection at once, its unsent data too (a peer that reads nothing)."""
    try:
        if MICROPYTHON:             # Stream.close() closes nothing there
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
    if not MICROPYTHON:
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


async def start_unix_server(handler, path, mode=0o600):
    """A stream server on a unix socket file (owner-only), or None where this
    runtime has none (MicroPython: use a loopback TCP endpoint instead)."""
    if not hasattr(asyncio, "start_unix_server"):
        return None
    from meta1lite.durable import remove  # here: durable imports compat
    remove(path)                # a socket file left by an earlier run
    server = await asyncio.start_unix_server(handler, path)
    os.chmod(path, mode)
    return server


# --- errors -----------------------------------------------------------------

TIMEOUT_ERRORS = (asyncio.TimeoutError,) if hasattr(asyncio, "TimeoutError") else ()
# MicroPython's errno lacks some names; the numbers are Linux's (and lwIP's).
EPIPE = getattr(errno, "EPIPE", 32)
ENOSPC = getattr(errno, "ENOSPC", 28)
EDQUOT = getattr(errno, "EDQUOT", 122)
ENETUNREACH = getattr(errno, "ENETUNREACH", 101)
ETIMEDOUT = getattr(errno, "ETIMEDOUT", 110)
# CPython's asyncio TLS layer raises ConnectionResetError() without an errno
_CONNECTION_ERRORS = (ConnectionError,) if not MICROPYTHON else ()
_CONNECTION_ERRNOS = (errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, EPIPE,
                      errno.ENOTCONN, errno.EHOSTUNREACH, ENETUNREACH, ETIMEDOUT, errno.EBADF)


def errno_of(exc):
    """The errno of an OSError on either runtime (MicroPython puts it in args[0])."""
    code = getattr(exc, "errno", None)
    if code is None and getattr(exc, "args", None) and isinstance(exc.args[0], int):
        code = exc.args[0]
    return code


def os_error_text(exc):
    """'[Errno 2] ENOENT' for an OSError, the same on both runtimes (MicroPython
    has no strerror); other exceptions as str()."""
    number = errno_of(exc) if isinstance(exc, OSError) else None
    if number is None:
        return str(exc)
    return "[Errno %d] %s" % (number, errno.errorcode.get(number, "?"))


def is_timeout(exc):
    """True for a timeout of either runtime's kind."""
    if TIMEOUT_ERRORS and isinstance(exc, TIMEOUT_ERRORS):
        return True
    return isinstance(exc, OSError) and errno_of(exc) == ETIMEDOUT


def is_tls_error(exc):
    """A TLS failure (a peer that left during the handshake, a bad record):
    mbedtls codes are negative on MicroPython, ssl.SSLError* on CPython."""
    code = errno_of(exc)
    return (isinstance(code, int) and code < 0) or type(exc).__name__.startswith("SSL")


def is_connection_error(exc):
    """True when the peer went away or could not be reached (TLS failures count:
    the peer broke the session)."""
    if isinstance(exc, (EOFError,) + _CONNECTION_ERRORS):
        return True
    return isinstance(exc, OSError) and (errno_of(exc) in _CONNECTION_ERRNOS or
                                         is_tls_error(exc))


def is_no_space(exc):
    """True for a full disk/flash (ENOSPC) or quota."""
    return isinstance(exc, OSError) and errno_of(exc) in (ENOSPC, EDQUOT)


# --- CBOR -------------------------------------------------------------------

if _cbor2 is not None:
    CBOR_ERRORS = (_cbor2.CBORError, ValueError, TypeError, EOFError)

    def cbor_dumps(obj):
        """Deterministic CBOR encoding (cbor2 canonical on CPython)."""
        return _cbor2.dumps(obj, canonical=True)

    def cbor_loads(data):
        """Decode exactly one CBOR item; errors are in CBOR_ERRORS."""
        return _cbor2.loads(bytes(data))
else:
    CBOR_ERRORS = (ValueError,)     # meta1lite.cbor.CBORError is a ValueError
    # meta1lite.cbor, imported at first use and kept here: an import statement at
    # each call looked its names up among the interned strings (1% of the unix
    # port's CPU, perf)
    _cbor = []

    def _cbor_module():
        if not _cbor:
            from meta1lite import cbor
            _cbor.append(cbor)
        return _cbor[0]

    def cbor_dumps(obj):
        """Deterministic CBOR encoding (meta1lite.cbor)."""
        return _cbor_module().dumps(obj)

    def cbor_loads(data):
        """Decode exactly one CBOR item; errors are in CBOR_ERRORS."""
        return _cbor_module().loads(data)


# --- logging ----------------------------------------------------------------

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# The code keeps MeTA1's module names; the log shows the Postfix program that writes
# the same line, because log tools (pflogsumm, mailgraph) count by program name:
# smtpd's client= and NOQUEUE: reject lines, pickup's uid= lines (README: Logs).
PROGRAMS = {
    "smtps": "smtpd",       # client=, NOQUEUE: reject:, connect/disconnect
    "smtpc": "smtp",        # to=<>, relay=, status=sent|deferred|bounced
    "spool": "qmgr",        # from=<>, size=, nrcpt= (queue active), removed
    "mcp": "master",        # daemon start/stop
    "sendmail": "pickup",   # uid= from=<>: a sendmail message adopted from incoming/
}


def program_name(module):
    """The Postfix program name a module's lines are logged under."""
    return PROGRAMS.get(module, module)


class Logger:
    """Postfix-shaped log lines: 'Mon DD HH:MM:SS host meta1lite/smtpd[pid]: ID: text'
    (module smtps logs as program smtpd: PROGRAMS)."""

    def __init__(self, hostname="localhost", level="info", stream=None):
        self.hostname = hostname
        self.threshold = LEVELS.get(level, 20)
        self.stream = stream
        self.ring = LogRing()       # recent lines for `meta1lite status`

    def log(self, level, module, text):
        """Write one line if `level` passes the threshold; keep it in the ring."""
        if LEVELS.get(level, 20) < self.threshold:
            return
        prefix = "" if level == "info" else level + ": "
        line = "%s %s meta1lite/%s[%d]: %s%s" % (
            format_time(wall_time()), self.hostname, program_name(module), getpid(), prefix, text)
        self.ring.append(line)
        stream = self.stream or sys.stderr
        stream.write(line + "\n")


log = Logger()


def configure_logging(hostname, level, stream=None, ring_bytes=None):
    """Set the global logger's hostname, level and stream, and the size of its ring
    of recent lines (None: as it is; a new size starts an empty ring)."""
    log.hostname = hostname
    log.threshold = LEVELS.get(level, 20)
    log.stream = stream
    if ring_bytes is not None and ring_bytes != len(log.ring.buf):
        log.ring = LogRing(ring_bytes)

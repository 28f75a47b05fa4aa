# meta1lite.compat - the ONE place where MicroPython and CPython differ.
#
# Owns: the asyncio import, the clocks (replaceable by tests), random bytes, a
# process number, timeouts, unix socket servers, errno classification, the CBOR
# codec choice and the logger; local times and OSError texts that read the same on
# both runtimes. Its halves: streams.py (reads with deadlines, bounded writes,
# connections), tls.py (TLS), durable.py (files: fsync, directory sync, atomic
# rename), heap.py (the MicroPython heap), process.py (watchdog, dropping root),
# listener.py (accepting), cli/host.py (the tools' uid, login name and blocking
# socket).
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


def clock_scale():
    """Simulated seconds per real second (1 but in tests that speed the clocks up)."""
    return _clock.scale


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
    return "%s %2d %02d:%02d:%02d" % (_month(t), t[2], t[3], t[4], t[5])


# names as one str each, sliced: a tuple of them costs a str object per name in a .mpy
_MONTHS = const("JanFebMarAprMayJunJulAugSepOctNovDec")
_DAYS = const("MonTueWedThuFriSatSun")


def _month(t):
    return _MONTHS[3 * t[1] - 3:3 * t[1]]


def _day(t):
    return _DAYS[3 * t[6]:3 * t[6] + 3]


def format_arrival(epoch):
    """'Mon Nov 24 14:08:00' in local time (mailq's arrival column)."""
    t = _broken_down(epoch, False)
    return "%s %s %02d %02d:%02d:%02d" % (_day(t), _month(t), t[2], t[3], t[4], t[5])


def rfc5322_date(epoch):
    """RFC 5322 Date: value in UTC, e.g. 'Tue, 24 Nov 2026 14:08:00 +0000'."""
    t = _broken_down(epoch, True)
    return "%s, %d %s %d %02d:%02d:%02d +0000" % (
        _day(t), t[2], _month(t), t[0], t[3], t[4], t[5])


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


# --- timeouts, unix sockets (the streams themselves: streams.py) -----------

_TIMEOUT_CM = getattr(asyncio, "timeout", None)     # CPython 3.11+


async def wait_for(awaitable, timeout_s):
    """Await with a timeout in (simulated) seconds; raises asyncio.TimeoutError.
    CPython 3.11+: asyncio.timeout() around the await, no task per call (the reads
    of smtps and smtpc: a loop iteration fewer per read)."""
    if _TIMEOUT_CM is None:
        return await asyncio.wait_for(awaitable, timeout_s / _clock.scale)
    async with _TIMEOUT_CM(timeout_s / _clock.scale):
        return await awaitable


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
        line = self._line(module, "" if level == "info" else level + ": ", text)
        self.ring.append(line)
        stream = self.stream or sys.stderr
        stream.write(line + "\n")

    def _line(self, module, prefix, text):
        return "%s %s meta1lite/%s[%d]: %s%s" % (
            format_time(wall_time()), self.hostname, program_name(module), getpid(), prefix, text)


if not MICROPYTHON:     # a board's heap keeps no small string it need not (they pin it)
    class _KeepingLogger(Logger):
        # the time stamp of the current second and each module's head, made once
        def __init__(self, *args):
            Logger.__init__(self, *args)
            self.stamp = (None, "")     # (second, its format_time)
            self.heads = {}             # module -> "host meta1lite/program[pid]: "

        def _line(self, module, prefix, text):
            now = int(wall_time())
            if now != self.stamp[0]:
                self.stamp = (now, format_time(now))
            head = self.heads.get(module)
            if head is None:
                head = self.heads[module] = "%s meta1lite/%s[%d]: " % (
                    self.hostname, program_name(module), getpid())
            return "%s %s%s%s" % (self.stamp[1], head, prefix, text)


log = Logger() if MICROPYTHON else _KeepingLogger()


def configure_logging(hostname, level, stream=None, ring_bytes=None):
    """Set the global logger's hostname, level and stream, and the size of its ring
    of recent lines (None: as it is; a new size starts an empty ring)."""
    log.hostname = hostname
    if not MICROPYTHON:
        log.heads = {}          # made again with the new hostname
    log.threshold = LEVELS.get(level, 20)
    log.stream = stream
    if ring_bytes is not None and ring_bytes != len(log.ring.buf):
        log.ring = LogRing(ring_bytes)

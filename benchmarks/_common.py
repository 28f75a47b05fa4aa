# Shared helpers of the benchmark scripts (CPython-only, the driver side).
# Owns: finding the tools (smtp-source/smtp-sink, strace, micropython), the load
# generators (smtp-source or the built-in asyncio client in _loadtools.py), the
# next-hop sink (smtp-sink or the aiosmtpd sink in _loadtools.py) with its message
# counter, daemon configurations for benchmarks, and table printing.
# Every load loop is bounded in count and time; every server listens on loopback.
import os
import re
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")
for _p in (TESTS, os.path.join(TESTS, "core"), ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from helpers.daemon import Daemon, bundle, config_text, free_port  # noqa: E402,F401
from helpers.upy import find_micropython, micropython_env  # noqa: E402,F401

LOADTOOLS = os.path.join(HERE, "_loadtools.py")
ENTRY = os.path.join(HERE, "_entry.py")
SENDER = "a@relay.test"
RCPT = "b@example.org"
# limits that must not be what a throughput benchmark measures
BENCH_SMTPS = ("max_connections = 200; max_connections_per_client = 200; "
               "max_messages_per_client_per_minute = 10000000; max_message_size = 10M;")
BENCH_QMGR = "max_queue_size = 2G; max_messages = 1000000; min_free_space = 64K;"


def tool(name):
    """Path of a Postfix tool (smtp-source, smtp-sink, postfix, postconf) or None."""
    return shutil.which(name) or next((p for p in ("/usr/sbin/" + name, "/usr/lib/postfix/sbin/" + name)
                                       if os.access(p, os.X_OK)), None)


def postfix_version():
    pc = tool("postconf")
    if not pc:
        return None
    out = subprocess.run([pc, "-d", "-h", "mail_version"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def bench_config(spool, port, top="", qmgr="", smar="", smtpc="", smtps=""):
    extra = "%s\nsmar { %s }\nsmtpc { %s }\nqmgr { %s %s }\n" % (top, smar, smtpc, BENCH_QMGR, qmgr)
    return config_text(spool, port, top_extra=extra, smtps_extra=BENCH_SMTPS + smtps)


def run_source(port, msgs, sessions, size, use_postfix=True, timeout=600, host="127.0.0.1"):
    """Send msgs messages of size bytes over `sessions` concurrent sessions.

    Returns (seconds, tool, details): details has 'ok' (acknowledged messages) when the
    built-in client ran; smtp-source reports only failures (on stderr)."""
    src = tool("smtp-source") if use_postfix else None
    if src:
        cmd = [src, "-l", str(size), "-m", str(msgs), "-s", str(sessions),
               "-f", SENDER, "-t", RCPT, "%s:%d" % (host, port)]
        name = "smtp-source"
    else:
        cmd = [sys.executable, LOADTOOLS, "source", "-l", str(size), "-m", str(msgs),
               "-s", str(sessions), "-f", SENDER, "-t", RCPT, "%s:%d" % (host, port)]
        name = "asyncio client"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    dt = time.perf_counter() - t0
    details = {"rc": proc.returncode, "stderr": proc.stderr.strip()[-2000:]}
    m = re.search(r"ok=(\d+) failed=(\d+)", proc.stdout)
    if m:
        details["ok"], details["failed"] = int(m.group(1)), int(m.group(2))
    return dt, name, details


class Sink:
    """A next hop on loopback that counts delivered messages: smtp-sink when
    installed, else the aiosmtpd sink of _loadtools.py. Both print 'mesg=N'."""

    def __init__(self, use_postfix=True):
        self.port = free_port()
        sink = tool("smtp-sink") if use_postfix else None
        if sink:
            cmd = [sink, "-c"] + (["-u", "nobody"] if os.geteuid() == 0 else []) + \
                  ["127.0.0.1:%d" % self.port, "256"]
            self.name = "smtp-sink"
        else:
            cmd = [sys.executable, LOADTOOLS, "sink", "127.0.0.1:%d" % self.port]
            self.name = "aiosmtpd sink"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.count = 0
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        wait_port(self.port, 10)

    def _read(self):
        buf = b""
        while True:
            data = self.proc.stdout.read1(4096) if hasattr(self.proc.stdout, "read1") \
                else self.proc.stdout.read(1)
            if not data:
                return
            buf = (buf + data)[-200:]
            found = re.findall(rb"mesg=(\d+)", buf)
            if found:
                self.count = int(found[-1])

    def wait_count(self, target, timeout, stall=20.0):
        """Wait until `target` messages arrived; returns the time it happened (perf_counter)
        or None after timeout seconds, or after `stall` seconds without a new message."""
        end = time.perf_counter() + timeout
        last, last_t = self.count, time.perf_counter()
        while time.perf_counter() < end:
            now = time.perf_counter()
            if self.count >= target:
                return now
            if self.count != last:
                last, last_t = self.count, now
            elif now - last_t > stall:
                return None
            time.sleep(0.01)
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_port(port, timeout, host="127.0.0.1"):
    import socket
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on %s:%d" % (host, port))


def start_daemon(runtime, workdir, conf, port, heap="320K", qmgr=True, env=None, trace=None,
                 profile=None):
    """`meta1lite run` through benchmarks/_entry.py (which can switch the queue manager
    off, install tests/helpers/shim_daemon.py's counters, or run cProfile)."""
    env = dict(env or {})
    if not qmgr:
        env["META1LITE_BENCH_NO_QMGR"] = "1"
    if trace:
        env["META1LITE_SHIM_TRACE"] = trace
    if profile:
        env["META1LITE_BENCH_PROFILE"] = profile
    return Daemon(runtime, workdir, conf, port, heap=heap, env=env, entry=ENTRY).start()


def start_at_heap(workdir, conf, port, heap_bytes):
    """The unix port's daemon started with heap_bytes of heap, or None if it did not start."""
    daemon = Daemon("micropython", workdir, conf, port, heap="%dK" % (heap_bytes // 1024))
    try:
        return daemon.start()
    except AssertionError:
        return None


def count_trace(path):
    """(syncs, acks, file syncs, dir syncs) from a shim_daemon trace file."""
    syncs = acks = fsyncs = dsyncs = 0
    with open(path) as f:
        for line in f:
            if line.startswith("SYNC "):
                syncs += 1
                if " file " in line:
                    fsyncs += 1
                else:
                    dsyncs += 1
            elif line.startswith("ACK "):
                acks += 1
    return syncs, acks, fsyncs, dsyncs


def strace_available():
    return shutil.which("strace") is not None


def table(title, header, rows):
    """Print a small fixed-width table."""
    print("\n== %s ==" % title)
    cols = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    for k, r in enumerate(cols):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))
    sys.stdout.flush()


def machine():
    """A one-line description of where the figures were taken."""
    import platform
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else -1
    return "%s, %d cpu, python %s, loadavg %.2f" % (platform.machine(), os.cpu_count() or 0,
                                                    platform.python_version(), load)


def bisect_heap(attempt, lo, hi, step):
    """The smallest heap (a multiple of step above lo) at which attempt(heap) is true,
    given attempt(hi) is; lo is taken to fail."""
    while hi - lo > step:
        mid = lo + (hi - lo) // 2 // step * step
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    return hi, lo


def parse_size(text):
    text = text.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    return int(text.rstrip("KM")) * mult


def kb(n):
    return "%.1fK" % (n / 1024.0)

# Test harness: the real meta1lite daemon as a subprocess, on CPython or under the
# MicroPython unix port with a board-sized heap, listening on loopback.
# CPython-only (the driver side).
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from helpers.upy import ROOT, find_micropython, micropython_env, run_micropython

RUNTIMES = ("cpython", "micropython")
# A board runs meta1lite frozen in flash with ~190K of heap left for data. The unix
# port keeps bytecode in the heap too (about 270K for the whole relay as .mpy,
# measured by benchmarks/heap.py), so the board-equivalent heap here is code + a
# board's data heap. Tests that need a router's heap (1M, design.md) say so.
UPY_HEAP = "512K"
ROUTER_HEAP = "1M"
START_TIMEOUT_S = 30
STOP_REQUEST_S = 30             # the control channel's stop answers when the stop is done
_bundle_built = []


def bundle():
    """The .mpy bundle the MicroPython daemon runs from (built once per test run).

    On the unix port the modules' bytecode lives in the heap, so a 192K board-sized
    heap holds the relay only as precompiled .mpy (compiling from source needs more)."""
    if not _bundle_built:
        out = os.path.join(tempfile.mkdtemp(prefix="m1l-bundle-"), "bundle")   # per test run
        subprocess.run([sys.executable, os.path.join(ROOT, "firmware", "build_bundle.py"),
                        "--out", out], check=True, capture_output=True)
        _bundle_built.append(out)
    return _bundle_built[0]


def free_port(host="127.0.0.1", besides=()):
    """A TCP port nobody listens on right now, none of `besides` (ports chosen for
    the same daemon and not bound yet: the system may hand the same one out twice)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in besides:
            return port


def config_text(spool, port, smtps_extra="", top_extra="", relay_from="127.0.0.1/32, ::1/128"):
    """A test configuration: hostname relay.test, smtps on 127.0.0.1:port."""
    return """hostname = "relay.test";
spool = "%s";
postmaster = "postmaster@relay.test";
log_level = info;
%s
smtps {
    listen = { 127.0.0.1:%d };
    relay_from = { %s };
    %s
}
""" % (spool, top_extra, port, relay_from, smtps_extra)


def _control_endpoint(conf):
    """(host, port) of a configuration's loopback control endpoint, or None."""
    m = re.search(r'^\s*control\s*=\s*"?127\.0\.0\.1:(\d+)"?', conf, re.M)
    return ("127.0.0.1", int(m.group(1))) if m else None


def listening(port, deadline_s):
    """True once something accepts connections on 127.0.0.1:port, False after
    deadline_s."""
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Daemon:
    """`meta1lite run -c FILE` in a subprocess; its log goes to a file."""

    def __init__(self, runtime, workdir, conf, port, heap=UPY_HEAP, env=None, entry=None):
        self.runtime = runtime
        self.workdir = str(workdir)
        self.conf_path = os.path.join(self.workdir, "meta1lite.conf")
        self.log_path = os.path.join(self.workdir, "daemon.log")
        self.port = port
        self.heap = heap
        self.env = env or {}
        self.entry = entry          # a script to run instead of `-m meta1lite` (shims)
        self.proc = None
        if runtime != "cpython" and not re.search(r"^\s*control\s*=", conf, re.M):
            conf = 'control = "127.0.0.1:%d";\n%s' % (free_port(besides=(port,)), conf)   # stop(): see there
        self.control = _control_endpoint(conf)
        with open(self.conf_path, "w") as f:
            f.write(conf)

    def command(self):
        start = [self.entry] if self.entry else ["-m", "meta1lite"]
        args = start + ["run", "-c", self.conf_path]
        if self.runtime == "cpython":
            return [sys.executable] + args, dict(os.environ)
        exe = find_micropython()
        if exe is None:
            run_micropython(["-c", "pass"])     # fails in CI, skips elsewhere
        return [exe, "-X", "heapsize=" + self.heap] + args, micropython_env(bundle())

    def start(self):
        cmd, env = self.command()
        env.update(self.env)
        self.logfile = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=self.logfile,
                                     stderr=subprocess.STDOUT)
        self.wait_listening()
        return self

    def wait_listening(self):
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited %s:\n%s" % (self.proc.returncode, self.log()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("daemon did not listen on %d:\n%s" % (self.port, self.log()))

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill(self):
        """SIGKILL: the power-cut stand-in."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def interrupt(self):
        """Ctrl-C as a user presses it: SIGINT (on the unix port it ends the process
        at once, as SIGTERM does: meta1lite/__main__.py)."""
        self.proc.send_signal(signal.SIGINT)

    def _stop_request(self):
        # MicroPython: the control channel's stop, as `meta1lite stop` does (Ctrl-C
        # ends the unix port's process at once; the tests of Ctrl-C send it).
        if self.control is None:
            return False
        try:
            with socket.create_connection(self.control, timeout=5) as sock:
                sock.settimeout(STOP_REQUEST_S)
                sock.sendall(b"stop\n")
                return bool(sock.recv(4096))
        except OSError:
            return False

    def stop(self):
        """Graceful stop: SIGTERM (CPython) or the control channel's stop (MicroPython;
        if nobody answers there, Ctrl-C, which ends the unix port's process at once)."""
        if self.proc and self.proc.poll() is None:
            if self.runtime == "cpython":
                self.proc.send_signal(signal.SIGTERM)
            elif not self._stop_request():
                self.interrupt()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "logfile", None):
            self.logfile.close()
            self.logfile = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

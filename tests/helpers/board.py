# tests/helpers/board.py - the simulated Pico W (boards/sim/) from the host side.
# CPython-only (the driver side of the sim; the board's own code is frozen in the
# firmware: boards/sim/main.py, boards/sim/simflash.py, boards/common/m1lboot.py).
#
# Owns: the sim firmware for tests (firmware/build_firmware.py, cached; a missing
# compiler or MicroPython source skips with its reason, and fails in CI), the board
# profile (boards/rpi-pico-w/profile.json), the flash image (created erased, formatted
# LittleFS2 and written by the firmware itself, as mpremote would on a board), the
# sim's configuration (boards/sim/meta1lite.conf.in), starting the firmware with the
# profile's heap and reading the flash counters back.
# Must never: put anything from this checkout on the sim's import path (it runs only
# what is frozen in), or write the image except through the firmware.
#
#   board = SimBoard(tmp_path)                       # profile rpi-pico-w, heap 192448
#   board.create_flash(sim_config(port, via_route(hop.port)))
#   board.start(port)                                # waits until it listens
#   ... smtplib to board.port ...
#   board.stop(); board.counters()                   # {"reads":..,"programs":..,"erases":..}
import json
import os
import signal
import socket
import string
import struct
import subprocess
import sys
import time

import pytest

from helpers.upy import ROOT

sys.path.insert(0, os.path.join(ROOT, "firmware"))
import build_firmware  # noqa: E402

PROFILES = os.path.join(ROOT, "boards")
DEFAULT_PROFILE = "rpi-pico-w"
CONF_TEMPLATE = os.path.join(ROOT, "boards", "sim", "meta1lite.conf.in")
COUNTERS = ("reads", "programs", "erases", "prog_bytes")
COUNTERS_FORMAT = "<4I"                  # simflash.py: array("I") of 4, little-endian x86
IMAGE_NAME = "flash.img"
TOOL_TIMEOUT_S = 60
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20
FLASH_QUIET_S = 2.0              # no program/erase for this long: the queue is at rest
_firmware = []


def unavailable(reason):
    """Skip with one clear reason; in CI (CI=true) nothing may skip: fail instead."""
    if os.environ.get("CI"):
        pytest.fail("sim firmware cannot be built in CI: %s" % reason)
    pytest.skip("sim firmware: %s" % reason)


def firmware():
    """The sim firmware's info dict (path, size, compiler, seconds, cached ...), built once."""
    if not _firmware:
        try:
            _firmware.append(build_firmware.build_sim(log=lambda *_: None))
        except build_firmware.Unavailable as exc:
            unavailable(str(exc))
    return _firmware[0]


def load_profile(name=DEFAULT_PROFILE):
    with open(os.path.join(PROFILES, name, "profile.json")) as f:
        return json.load(f)


def via_route(port, host="127.0.0.1", extra=""):
    """A smar route sending everything to [host]:port."""
    return 'route "*" { via = "[%s]:%d"; %s }' % (host, port, extra)


QUEUE_OPTIONS = ("segment_size", "free_segments", "record_reserve", "min_free_space",
                 "max_queue_size")
ALWAYS_OPEN_SEGMENTS = 2         # the journal's current and pre-created next segment


def queue_budget(profile):
    """Bytes of flash the profile's "queue" block plans for (all of it must fit):
    littlefs overhead, kept segments, reserves and max_queue_size."""
    q = profile["queue"]
    kept = (ALWAYS_OPEN_SEGMENTS + q["free_segments"]) * q["segment_size"]
    return (q["fs_overhead"] + kept + q["record_reserve"] + q["min_free_space"]
            + q["max_queue_size"])


def sim_config(listen_port, routes, smtpc_extra="", qmgr_extra="", log_level="info",
               profile=DEFAULT_PROFILE, queue=None, extra="",
               listen_host="127.0.0.1", relay_from="127.0.0.0/8", spool="/flash/spool"):
    """The sim's meta1lite.conf (boards/sim/meta1lite.conf.in) filled in; the qmgr
    flash budget from the profile's "queue" block, `queue` overriding some of it;
    a real board of the hil rig listens on its LAN address for the host's network."""
    with open(CONF_TEMPLATE) as f:
        template = string.Template(f.read())
    prof = load_profile(profile) if isinstance(profile, str) else profile
    values = dict((k, prof["queue"][k]) for k in QUEUE_OPTIONS)
    values.update(queue or {})
    return template.substitute(listen_port=listen_port, routes=routes, smtpc_extra=smtpc_extra,
                               qmgr_extra=qmgr_extra, log_level=log_level,
                               extra=extra, listen_host=listen_host, relay_from=relay_from,
                               spool=spool, **values)


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class SimBoard:
    """One simulated board: a work folder with its flash image, log and counters."""

    def __init__(self, workdir, profile=DEFAULT_PROFILE, heap=None, uptime_s=0):
        self.workdir = str(workdir)
        self.uptime_s = uptime_s        # the relay's clock starts as if up this long
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.heap = heap or self.profile["heap_bytes"]
        self.image = os.path.join(self.workdir, IMAGE_NAME)
        self.log_path = os.path.join(self.workdir, "board.log")
        self.exe = firmware()["path"]
        self.proc = None
        self.port = None
        self._logfile = None

    # --- the wiring: environment of the firmware ------------------------------------
    def env(self, cut_after=0):
        flash = self.profile["flash"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROPY", "SIM_"))}
        env.update(MICROPYPATH=".frozen", SIM_FLASH=self.image,
                   SIM_FLASH_GEOMETRY="%d,%d,%d" % (flash["block_size"], flash["block_count"],
                                                    flash["progsize"]))
        if cut_after:
            env["SIM_POWER_CUT_AFTER"] = str(cut_after)
        if self.uptime_s:
            env["SIM_UPTIME_S"] = str(self.uptime_s)
        return env

    def command(self, *args):
        return [self.exe, "-X", "heapsize=%d" % self.heap] + list(args)

    def run_tool(self, code, heap=None):
        """Run `code` on the board (not booting the relay); returns CompletedProcess."""
        cmd = [self.exe, "-X", "heapsize=%d" % (heap or self.heap), "-c", code]
        proc = subprocess.run(cmd, env=self.env(), cwd=self.workdir, capture_output=True,
                              text=True, timeout=TOOL_TIMEOUT_S)
        if proc.returncode != 0:
            raise AssertionError("board tool failed: %s\n%s%s" % (code, proc.stdout, proc.stderr))
        return proc

    # --- flash ------------------------------------------------------------------------
    def create_flash(self, config_text=None):
        """A new erased image, formatted LittleFS2 on the board, with meta1lite.conf."""
        flash = self.profile["flash"]
        with open(self.image, "wb") as f:
            f.write(b"\xff" * (flash["block_size"] * flash["block_count"]))
        self.run_tool("import simboot; simboot.format_flash()")
        if config_text is not None:
            self.put_text("meta1lite.conf", config_text)

    def put_text(self, name, text):
        host = os.path.join(self.workdir, "put." + name.replace("/", "_"))
        with open(host, "w") as f:
            f.write(text)
        self.run_tool("import simboot; simboot.put(%r, %r)" % (host, name))
        os.remove(host)

    def counters(self):
        """The flash counters so far (live while the board runs)."""
        return self.counters_of(self.image)

    def wait_flash_idle(self, quiet_s=FLASH_QUIET_S, deadline_s=START_TIMEOUT_S):
        """Wait until no program or erase happened for quiet_s; returns the counters."""
        end = time.time() + deadline_s
        last, since = self.counters(), time.time()
        while time.time() < end:
            time.sleep(0.1)
            now = self.counters()
            if (now["programs"], now["erases"]) != (last["programs"], last["erases"]):
                last, since = now, time.time()
            elif time.time() - since >= quiet_s:
                return now
        raise AssertionError("the board's flash never went quiet:\n%s" % self.log()[-4000:])

    @staticmethod
    def counters_of(image):
        """{reads, programs, erases, prog_bytes} from the file simflash keeps beside IMAGE."""
        with open(image + ".counters", "rb") as f:
            data = f.read(struct.calcsize(COUNTERS_FORMAT))
        return dict(zip(COUNTERS, struct.unpack(COUNTERS_FORMAT, data)))

    # --- running ------------------------------------------------------------------------
    def start(self, port, cut_after=0, wait=True):
        """Boot the board (main.py: mount /flash, run the relay); wait until it listens."""
        self.port = port
        self._logfile = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command("-m", "simboot"), env=self.env(cut_after),
                                     cwd=self.workdir, stdout=self._logfile,
                                     stderr=subprocess.STDOUT)
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, deadline_s=START_TIMEOUT_S):
        end = time.time() + deadline_s
        while time.time() < end:
            if self.proc.poll() is not None:
                raise AssertionError("board exited %s:\n%s" % (self.proc.returncode, self.log()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("board did not listen on %d:\n%s" % (self.port, self.log()))

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        """Ctrl-C (SIGINT: the sim raises KeyboardInterrupt between bytecodes, as a
        board does, and mcp stops in order); returns the exit status."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()
        return self.proc.returncode if self.proc is not None else None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def _close_log(self):
        if self._logfile is not None:
            self._logfile.close()
            self._logfile = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

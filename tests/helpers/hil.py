# tests/helpers/hil.py - the hardware-in-the-loop rig (tests/hil/): one board, the
# simulated Pico W (the default, in CI) or a real one over its serial console and the
# LAN. CPython-only.
#
# Owns: deploying to the board with the real command (scripts/flash/flash.py, run as a
# process), the board's configuration for the rig (boards/sim/meta1lite.conf.in: the
# sim on loopback, a real board on its LAN address, relaying to a next hop on this
# host), the console's commands (`status`, `fault MODULE`: one line typed, the
# `console: {json}` reply back, in `console~ ` pieces first when long), resets over the console and power cuts (the sim:
# simflash's cut after N flash operations, then power back; a real board: the person
# at the rig is asked to pull the plug).
# Must never: reach the board other than through its console and its SMTP port, or
# touch a real board's flash except through scripts/flash.
import json
import os
import re
import subprocess
import sys
import time

import serial

from helpers.board import SimBoard, free_port, sim_config, via_route
from helpers.simconsole import SimConsole
from helpers.upy import ROOT

FLASH = os.path.join(ROOT, "scripts", "flash", "flash.py")
FLASH_TIMEOUT_S = 300
CONSOLE_TIMEOUT_S = 30
BOOT_TIMEOUT_S = 120
SMTP_PORT_REAL = 25
# at the start of a line: a relay log line may quote "console: " itself
CONSOLE_REPLY = re.compile(rb"(?m)^console: ([^\r\n]*)\r?\n")
CONSOLE_PIECE = re.compile(rb"(?m)^console~ ([^\r\n]*)\r?\n")
PROMPT = b">>> "
STOP_WAIT_S = 30                # Ctrl-C: mcp.stop_timeout (10 s) and margin, then Ctrl-C again


class Rig:
    """The board under test; `host`/`port` reach its SMTP listener."""

    def __init__(self, workdir, board="sim", tty=None, board_host=None, hop_host=None):
        self.workdir = str(workdir)
        self.board = board
        self.sim = None
        self.console = None
        self.tty = tty
        self.host = board_host or "127.0.0.1"
        self.hop_host = hop_host or "127.0.0.1"
        self.port = free_port() if tty is None else SMTP_PORT_REAL
        if tty is None:
            self.sim = SimBoard(self.workdir)
            self.sim.create_flash()
            self.console = SimConsole(self.sim).start()
            self.tty = self.console.port

    # --- configuration and deployment ---------------------------------------------------
    def config(self, hop_port, extra="", qmgr_extra=""):
        """The board's meta1lite.conf, relaying everything to the next hop on this host."""
        if self.sim is not None:
            return sim_config(self.port, via_route(hop_port, self.hop_host),
                              extra=extra, qmgr_extra=qmgr_extra)
        spool = "/flash/spool" if self.board != "rpi-pico-w" else "/spool"
        return sim_config(self.port, via_route(hop_port, self.hop_host), profile=self.board
                          if self.board != "sim" else "rpi-pico-w",
                          extra=extra, qmgr_extra=qmgr_extra,
                          listen_host="0.0.0.0", relay_from=self.hop_host + "/32", spool=spool)

    def flash(self, conf_text, *options):
        """Run scripts/flash/flash.py with CONF_TEXT; the CompletedProcess."""
        path = os.path.join(self.workdir, "deploy.conf")
        with open(path, "w") as f:
            f.write(conf_text)
        board = "sim" if self.sim is not None else self.board
        cmd = [sys.executable, FLASH, "--board", board, "--port", self.tty, "-c", path]
        return subprocess.run(cmd + list(options), capture_output=True, text=True,
                              timeout=FLASH_TIMEOUT_S, cwd=ROOT)

    def deploy(self, conf_text):
        """Flash and boot; fails with the tool's output unless the banner came."""
        proc = self.flash(conf_text)
        assert proc.returncode == 0 and "daemon started" in proc.stdout, \
            "flash failed:\n%s%s\n%s" % (proc.stdout, proc.stderr, self.log()[-3000:])
        return proc

    # --- the console ----------------------------------------------------------------------
    def open_console(self):
        return serial.Serial(self.tty, 115200, timeout=0.1, exclusive=True)

    def ask(self, line):
        """Type LINE on the console while the relay runs; its JSON reply (a dict)."""
        with self.open_console() as con:
            con.write(line.encode() + b"\r")
            data = read_until(con, CONSOLE_REPLY, CONSOLE_TIMEOUT_S)
        return json.loads(reply_of(data))

    def reset(self):
        """Ctrl-C, then Ctrl-D at the REPL: the board boots main.py again."""
        with self.open_console() as con:
            con.write(b"\r\x03")
            try:
                read_until(con, re.compile(re.escape(PROMPT)), STOP_WAIT_S)
            except AssertionError:  # the orderly stop did not end: Ctrl-C again, as a person would
                con.write(b"\r\x03")
                read_until(con, re.compile(re.escape(PROMPT)), BOOT_TIMEOUT_S)
            con.write(b"\x04")

    def wait_log(self, pattern, after=0, deadline_s=BOOT_TIMEOUT_S):
        """Wait until the board's log (sim) matches PATTERN past offset AFTER."""
        end = time.time() + deadline_s
        while time.time() < end:
            found = re.search(pattern, self.log()[after:])
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError("no %r in the board's log:\n%s" % (pattern, self.log()[-4000:]))

    def log(self):
        if self.sim is None:
            return ""
        return self.sim.log()

    # --- power ------------------------------------------------------------------------
    def cut_power_after(self, operations):
        """Arm a power cut after OPERATIONS flash programs+erases from the next boot,
        and reset into it (sim); a real board: the person at the rig pulls the plug."""
        if self.console is None:
            input("HIL: pull the board's power plug while mail is being sent, then press Enter")
            return
        self.console.cut_after = operations
        self.reset()

    def power_back(self):
        """Power on after a cut; waits for the relay's banner."""
        if self.console is None:
            input("HIL: plug the board back in, then press Enter")
            return
        mark = len(self.log())
        self.console.power_on()
        self.wait_log(r"daemon started", after=mark)

    def is_off(self):
        return self.console.is_off() if self.console is not None else True

    def close(self):
        if self.console is not None:
            self.console.stop()


def reply_of(console):
    """The control reply in console output: its `console~ ` pieces and `console: ` end
    joined (the relay's log lines may fall between them)."""
    last = CONSOLE_REPLY.search(console)
    pieces = CONSOLE_PIECE.findall(console[:last.start()])
    return (b"".join(pieces) + last.group(1)).decode()


def read_until(con, pattern, timeout_s):
    data, end = b"", time.time() + timeout_s
    while time.time() < end:
        data += con.read(4096)
        if pattern.search(data):
            return data
    raise AssertionError("no %r on the console within %ds:\n%r"
                         % (pattern.pattern, timeout_s, data[-2000:]))

# tests/helpers/simconsole.py - the simulated Pico W's serial console: a
# pseudo-terminal that mpremote (scripts/flash, the hil tests) opens as it opens
# /dev/ttyACM0. CPython-only (the host side of boards/sim/).
#
# Owns: the board's power and reset loop and its USB-serial bridge. The firmware runs
# `micropython -i -m simboot` with its stdin/stdout/stderr on a first pty (its
# controlling terminal, so a Ctrl-C typed on the console interrupts the relay as the
# USB driver's interrupt character does on a board); a second pty is the console the
# user opens (`port`); a thread copies bytes both ways and appends everything the
# board prints to board.log. Like USB CDC, output is dropped while nobody has the
# console open. When the firmware exits (Ctrl-D in its REPL: a reset) it is booted
# again; when the power was cut (simflash killed it) it stays off until power_on().
# Must never: run anything but the sim firmware, or keep the console's output for a
# reader who is not there.
import errno
import fcntl
import os
import pty
import select
import signal
import subprocess
import termios
import threading
import time
import tty

CHUNK = 4096
POLL_MS = 100
RESET_PAUSE_S = 0.2
STOP_TIMEOUT_S = 30
POWER_CUT = -9                  # simflash's kill -9: the board stays off
CTRL_C, CTRL_D = b"\x03", b"\x04"


def _like_a_uart(fd):
    """No newline translation and no echo on the board's side (a board's REPL writes
    its own CR LF, which mpremote matches exactly), but still the interrupt
    character: Ctrl-C raises KeyboardInterrupt in the running relay."""
    attrs = termios.tcgetattr(fd)
    attrs[1] &= ~termios.OPOST
    attrs[3] &= ~(termios.ECHO | termios.ECHONL)
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _controlling_tty():
    # the console is the board's terminal; a Ctrl-C before micropython has set its
    # handler is ignored (a board is never killed by one)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class SimConsole:
    """The running sim board behind a console pty; `port` is the pty's path."""

    def __init__(self, board, cut_after=0):
        self.board = board
        self.cut_after = cut_after
        self.proc = None
        self.boots = 0
        self.power = threading.Event()
        self.stopping = threading.Event()
        self.closing = threading.Event()
        self.board_fd, self._board_slave = pty.openpty()
        _like_a_uart(self._board_slave)
        self.user_fd, user_slave = pty.openpty()
        tty.setraw(user_slave)
        self.port = os.ttyname(user_slave)
        os.close(user_slave)
        self._log = open(board.log_path, "ab")
        self._threads = [threading.Thread(target=self._power_loop, daemon=True),
                         threading.Thread(target=self._copy_loop, daemon=True)]

    def start(self):
        self.power.set()
        for t in self._threads:
            t.start()
        return self

    # --- power and resets -------------------------------------------------------------
    def _boot(self):
        cut, self.cut_after = self.cut_after, 0           # a cut is armed for one boot
        env = self.board.env(cut)
        env["SIM_CONSOLE"] = "1"
        s = self._board_slave
        self.boots += 1
        self.proc = subprocess.Popen(self.board.command("-i", "-m", "simboot"), env=env,
                                     cwd=self.board.workdir, stdin=s, stdout=s, stderr=s,
                                     start_new_session=True, preexec_fn=_controlling_tty)
        return self.proc.wait()

    def _power_loop(self):
        while not self.stopping.is_set():
            self.power.wait()
            if self.stopping.is_set():
                return
            status = self._boot()
            self._note("sim: board exited %s%s" % (
                status, "; power off" if status == POWER_CUT else "; reset"))
            if status == POWER_CUT:
                self.power.clear()
            time.sleep(RESET_PAUSE_S)

    def power_on(self, cut_after=0):
        """Power the board back on (after a cut), arming another cut if asked."""
        self.cut_after = cut_after
        self.power.set()

    def is_off(self):
        return not self.power.is_set() and (self.proc is None or self.proc.poll() is not None)

    def _note(self, text):
        self._log.write(("\n%s\n" % text).encode())
        self._log.flush()

    # --- the bridge -------------------------------------------------------------------
    def _copy_loop(self):
        poll = select.poll()
        poll.register(self.board_fd, select.POLLIN)
        poll.register(self.user_fd, select.POLLIN)
        while not self.closing.is_set():
            for fd, ev in poll.poll(POLL_MS):
                if fd == self.board_fd and ev & select.POLLIN:
                    self._from_board(os.read(self.board_fd, CHUNK))
                elif fd == self.user_fd and ev & select.POLLIN:
                    self._to_board(self._read_user())

    def _read_user(self):
        try:
            return os.read(self.user_fd, CHUNK)
        except OSError as exc:          # EIO: the console was just closed
            if exc.errno != errno.EIO:
                raise
            return b""

    def _from_board(self, data):
        self._log.write(data)
        self._log.flush()
        if self.console_open():
            try:
                os.write(self.user_fd, data)
            except OSError:
                pass

    def _to_board(self, data):
        if data:
            os.write(self.board_fd, data)

    def console_open(self):
        """True while someone has the console pty open (no hang-up on its master)."""
        poll = select.poll()
        poll.register(self.user_fd, select.POLLHUP)
        return not poll.poll(0)

    def type(self, data):
        """Bytes typed on the board's console (as the bridge would pass them on)."""
        self._to_board(data)

    # --- the end ----------------------------------------------------------------------
    def stop(self):
        """Ctrl-C (the relay stops gracefully), then Ctrl-D to its REPL; kill if stuck."""
        self.stopping.set()
        self.power.set()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            end = time.time() + STOP_TIMEOUT_S
            while self.proc.poll() is None and time.time() < end:
                time.sleep(0.5)
                self._to_board(CTRL_D)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        self.closing.set()
        for t in self._threads:
            t.join(timeout=5)
        for fd in (self.board_fd, self._board_slave, self.user_fd):
            os.close(fd)
        self._log.close()

#!/usr/bin/env python3
# scripts/flash/flash.py - deploys meta1lite to a board over its serial console with
# mpremote's transport, and boots it:
#
#   scripts/flash/flash.py --port /dev/ttyACM0 [--board rpi-pico-w] -c board.conf [--bundle]
#   scripts/flash/flash.py --board sim [-c sim.conf] [--workdir DIR] [--keep-running]
#
# Owns: refusing a configuration that `meta1lite check` refuses; the list of files a
# board gets (boards/BOARD/main.py and the configuration; with --bundle, for a stock
# firmware, the `.mpy` bundle under lib/ too); copying only what changed (the SHA-256
# of each file computed on the board with hashlib, compared with the local one);
# progress; the reset and the wait for the relay's banner on the console, with the
# boot-to-banner time. --board sim without --port boots the simulated Pico W behind a
# pseudo-terminal first (tests/helpers/simconsole.py) and then takes the very same
# path as a real port.
# Must never: write a file whose hash is unchanged, copy anything after `check`
# failed, or format a board's flash (a new sim image is formatted by the sim itself).
# CPython-only (the host side).
import argparse
import hashlib
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "firmware"))

from mpremote.transport import TransportError, TransportExecError  # noqa: E402
from mpremote.transport_serial import SerialTransport  # noqa: E402

BOARDS = os.path.join(ROOT, "boards")
BUNDLE = os.path.join(ROOT, "firmware", "build", "bundle")
SIM_WORKDIR = os.path.join(ROOT, "firmware", "build", "sim-board")
SIM_SMTP, SIM_NEXT_HOP = 2525, 2526      # the default sim config
BANNER = re.compile(rb"daemon started; listening on [^\r\n]*")
SAFE_MODE = re.compile(rb"m1lboot: safe mode[^\r\n]*")
PROMPT = b">>> "
STOPPING = re.compile(rb"stopping|interrupted|KeyboardInterrupt")
CTRL_C_QUIET_S = 3.0            # no prompt and a quiet console: the Ctrl-C was lost
CHUNK = 256                     # bytes per raw-REPL write (mpremote's default)
STOP_TIMEOUT_S = 60             # the relay's graceful stop after Ctrl-C
BANNER_TIMEOUT_S = 120
READ_PAUSE_S = 0.02
EXIT_CHECK, EXIT_BOARD = 1, 2


def parse_args(argv):
    p = argparse.ArgumentParser(description="deploy meta1lite to a board over serial")
    p.add_argument("--port", help="the board's serial console, e.g. /dev/ttyACM0 (a sim's pty)")
    p.add_argument("--board", default="rpi-pico-w",
                   help="folder in boards/ (default %(default)s); sim without --port "
                        "boots the simulated Pico W")
    p.add_argument("-c", "--conf", help="the configuration to deploy as meta1lite.conf")
    p.add_argument("--bundle", action="store_true",
                   help="stock firmware: also copy the .mpy bundle to lib/")
    p.add_argument("--workdir", default=SIM_WORKDIR, help="sim: flash image and log folder")
    p.add_argument("--keep-running", action="store_true", help="sim: run until Ctrl-C")
    p.add_argument("--banner-timeout", type=float, default=BANNER_TIMEOUT_S)
    p.add_argument("--no-reset", action="store_true", help="copy only; do not reset")
    args = p.parse_args(argv)
    if not args.port and args.board != "sim":
        p.error("--port is needed for a real board (or --board sim)")
    if not args.conf and args.board != "sim":
        p.error("-c FILE is needed for a real board")
    return args


def check_config(path):
    """`meta1lite check` on the file; False (and its errors printed) when refused."""
    proc = subprocess.run([sys.executable, "-m", "meta1lite", "check", "-c", path],
                          capture_output=True, text=True, cwd=ROOT)
    sys.stdout.write(proc.stdout + proc.stderr)
    return proc.returncode == 0


def files_for(board, conf, bundle):
    """[(local path, path on the board relative to its flash)] to deploy."""
    files = [(os.path.join(BOARDS, board, "main.py"), "main.py"), (conf, "meta1lite.conf")]
    if bundle:
        import build_bundle
        build_bundle.build(BUNDLE)
        top = os.path.join(BUNDLE, "meta1lite")
        for folder, _dirs, names in sorted(os.walk(top)):
            for name in sorted(names):
                local = os.path.join(folder, name)
                files.append((local, "lib/" + os.path.relpath(local, BUNDLE).replace(os.sep, "/")))
    return files


# --- the board's console ----------------------------------------------------------------
def read_console(transport, pattern, timeout_s, echo=None, quiet=False):
    """Read the console until PATTERN (a compiled regex) matches; (match, seconds).
    quiet: the timeout runs from the last byte read rather than from the start."""
    data, start = b"", time.monotonic()
    last = start
    while time.monotonic() - (last if quiet else start) < timeout_s:
        n = transport.serial.inWaiting()
        chunk = transport.serial.read(n) if n else b""
        if not chunk:
            time.sleep(READ_PAUSE_S)
            continue
        last = time.monotonic()
        if echo:
            echo(chunk)
        data += chunk
        found = pattern.search(data)
        if found:
            return found, time.monotonic() - start
    raise TransportError("no %r on the console within %ds; last output:\n%s"
                         % (pattern.pattern, timeout_s, data[-2000:].decode("utf-8", "replace")))


def to_raw_repl(transport):
    """Ctrl-C (the relay stops gracefully), wait for the REPL's prompt, enter raw REPL.
    A Ctrl-C that met a board still booting is sent again once the console has been
    quiet for CTRL_C_QUIET_S, unless the relay said it is stopping."""
    end = time.monotonic() + STOP_TIMEOUT_S
    seen = b""
    while True:
        transport.serial.write(b"\r\x03")
        try:
            read_console(transport, re.compile(re.escape(PROMPT)), CTRL_C_QUIET_S,
                         echo=lambda b: None, quiet=True)
            break
        except TransportError as exc:
            seen += exc.args[0].encode()
            if time.monotonic() > end:
                raise
            if STOPPING.search(seen):
                read_console(transport, re.compile(re.escape(PROMPT)), STOP_TIMEOUT_S)
                break
    transport.enter_raw_repl(soft_reset=False)


def flash_root(transport):
    """'/flash' where the board mounts its flash there (stm32, the sim), '' for rp2's '/'."""
    return transport.eval("'/flash' if 'flash' in __import__('os').listdir('/') else ''")


def board_hash(transport, path):
    try:
        return transport.fs_hashfile(path, "sha256", chunk_size=CHUNK)
    except (TransportError, TransportExecError, OSError):
        return None             # missing (or unreadable): copy it


def make_dirs(transport, path):
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        folder = "/".join(parts[:i])
        if folder and not transport.fs_exists(folder):
            transport.fs_mkdir(folder)


def progress(name):
    def show(done, total):
        sys.stdout.write("\r  %s: %d/%d bytes" % (name, done, total))
        sys.stdout.flush()
    return show


def deploy(transport, files):
    """Copy what changed; ([copied], [skipped]) as paths on the board."""
    root = flash_root(transport)
    copied, skipped = [], []
    for n, (local, rel) in enumerate(files, 1):
        path = root + "/" + rel
        with open(local, "rb") as f:
            data = f.read()
        if board_hash(transport, path) == hashlib.sha256(data).digest():
            skipped.append(path)
            print("[%d/%d] skipped %s (unchanged)" % (n, len(files), path))
            continue
        make_dirs(transport, path)
        transport.fs_writefile(path, data, chunk_size=CHUNK, progress_callback=progress(path))
        copied.append(path)
        print("\r[%d/%d] copied %s (%d bytes)" % (n, len(files), path, len(data)))
    return copied, skipped


def reset_and_wait(transport, timeout_s):
    """Leave the raw REPL and soft-reset (Ctrl-D at the friendly REPL: a board runs
    main.py again, the sim's process is booted again); seconds to the relay's banner."""
    transport.exit_raw_repl()
    read_console(transport, re.compile(re.escape(PROMPT)), STOP_TIMEOUT_S)
    transport.serial.write(b"\x04")
    found, seconds = read_console(transport, re.compile(BANNER.pattern + b"|" + SAFE_MODE.pattern),
                                  timeout_s, echo=lambda b: sys.stdout.write(
                                      "| " + b.decode("utf-8", "replace").replace("\n", "\n| ")))
    print("\n%s after %.2f s" % (found.group(0).decode(), seconds))
    return found.group(0), seconds


def flash(port, board, conf, bundle=False, reset=True, banner_timeout=BANNER_TIMEOUT_S):
    """Deploy to the board on PORT and boot it; (copied, skipped, banner, seconds)."""
    transport = SerialTransport(port)
    try:
        to_raw_repl(transport)
        copied, skipped = deploy(transport, files_for(board, conf, bundle))
        print("copied %d, skipped %d (unchanged)" % (len(copied), len(skipped)))
        banner, seconds = None, None
        if reset:
            banner, seconds = reset_and_wait(transport, banner_timeout)
        else:
            transport.exit_raw_repl()
        return copied, skipped, banner, seconds
    finally:
        transport.close()


# --- the simulated board ----------------------------------------------------------------
def sim_default_conf(workdir):
    from helpers.board import sim_config, via_route
    path = os.path.join(workdir, "meta1lite.conf")
    with open(path, "w") as f:
        f.write(sim_config(SIM_SMTP, via_route(SIM_NEXT_HOP)))
    return path


def start_sim(workdir):
    """Boot the sim Pico W (a new flash image if WORKDIR has none); its SimConsole."""
    from helpers.board import SimBoard
    from helpers.simconsole import SimConsole
    os.makedirs(workdir, exist_ok=True)
    board = SimBoard(workdir)
    if not os.path.exists(board.image):
        board.create_flash()
    console = SimConsole(board).start()
    print("sim Pico W: console %s, flash %s, log %s" % (console.port, board.image, board.log_path))
    return console


def main(argv=None):
    args = parse_args(argv)
    console = None
    if args.board == "sim" and not args.port:
        os.makedirs(args.workdir, exist_ok=True)
        args.conf = args.conf or sim_default_conf(args.workdir)
    if not check_config(args.conf):
        print("flash: %s refused by meta1lite check; nothing copied" % args.conf)
        return EXIT_CHECK
    if args.board == "sim" and not args.port:
        console = start_sim(args.workdir)
        args.port = console.port
    try:
        flash(args.port, args.board, args.conf, args.bundle, not args.no_reset,
              args.banner_timeout)
        if console is not None and args.keep_running:
            print("sim running (Ctrl-C stops it)")
            while True:
                time.sleep(1)
    except TransportError as exc:
        print("flash: %s" % exc)
        return EXIT_BOARD
    except KeyboardInterrupt:
        pass
    finally:
        if console is not None:
            console.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

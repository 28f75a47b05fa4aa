#!/usr/bin/env python3
# Runs the simulated Pico W by hand (CPython, the host side):
#
#   .venv/bin/python boards/sim/run.py --via 127.0.0.1:2526 [--port 2525] [--heap 192448]
#
# builds the sim firmware (cached), makes a fresh flash image in --workdir, writes the
# sim configuration (relay everything to --via), boots the board and relays until
# Ctrl-C, then prints the flash counters. Owns nothing of its own: it is a command
# line over tests/helpers/board.py (SimBoard). Must never: reuse a flash image unless
# --keep-flash is given.
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from helpers.board import SimBoard, free_port, sim_config, via_route  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description="run the simulated Pico W")
    parser.add_argument("--via", required=True, help="next hop HOST:PORT (IP address)")
    parser.add_argument("--port", type=int, default=0, help="SMTP port (default: a free one)")
    parser.add_argument("--heap", type=int, default=0, help="heap bytes (default: profile)")
    parser.add_argument("--workdir", default="", help="folder for flash.img and board.log")
    parser.add_argument("--keep-flash", action="store_true", help="boot the existing image")
    args = parser.parse_args()
    host, _, hop_port = args.via.rpartition(":")
    workdir = args.workdir or tempfile.mkdtemp(prefix="m1l-sim-")
    os.makedirs(workdir, exist_ok=True)
    port = args.port or free_port()
    board = SimBoard(workdir, heap=args.heap or None)
    if not args.keep_flash:
        board.create_flash(sim_config(port, via_route(int(hop_port), host)))
    board.start(port)
    print("sim Pico W: smtp 127.0.0.1:%d, heap %d, log %s (Ctrl-C stops)"
          % (port, board.heap, board.log_path))
    try:
        while board.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    board.stop()
    print("flash counters: %s" % board.counters())


if __name__ == "__main__":
    main()

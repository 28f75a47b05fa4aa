# Power-cut loop (issue 11): the simulated Pico W (boards/sim, the sim firmware) relays
# 2 KB messages sent one at a time while its flash fails after N block operations
# (programs + erases: simflash cuts the write and the process is killed, as a dying
# board); it then boots again without a cut and must deliver every message it had
# acknowledged. N runs over --cuts points spread from boot through committing,
# delivering and recycling segments (or drawn at random with --seed). Prints a row per
# cut and the totals: acknowledged, delivered (duplicates allowed), lost (must be 0).
# tests/test_board_sim.py runs 20 fixed points; this runs as many as asked.
# Usage: .venv/bin/python scripts/power_cut_loop.py [--cuts 100] [--first 5] [--last 450]
#        [--seed S]
import argparse
import os
import random
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (os.path.join(ROOT, "tests"), ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from test_board_sim import cut_once  # noqa: E402


def cut_points(args):
    if args.seed is not None:
        rnd = random.Random(args.seed)
        return sorted(rnd.randint(args.first, args.last) for _ in range(args.cuts))
    if args.cuts == 1:
        return [args.first]
    step = (args.last - args.first) / float(args.cuts - 1)
    return [int(args.first + i * step) for i in range(args.cuts)]


def run(args):
    """Run every cut; (rows, failures): rows (N, acknowledged, delivered)."""
    work = tempfile.mkdtemp(prefix="m1l-powercut-")
    rows, failures = [], []
    for i, cut in enumerate(cut_points(args)):
        folder = os.path.join(work, "cut%d-%d" % (i, cut))
        os.mkdir(folder)
        try:
            acked, delivered = cut_once(folder, cut)
        except AssertionError as exc:       # an acknowledged message lost, or a crash
            failures.append((cut, str(exc).splitlines()[0][:200]))
            print("%6d  FAILED: %s" % failures[-1], flush=True)
            continue
        rows.append((cut, acked, delivered))
        print("%6d %13d %10d" % rows[-1], flush=True)
    if not failures:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("kept for reading: %s" % work)
    return rows, failures


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cuts", type=int, default=100, help="power cuts (default 100)")
    ap.add_argument("--first", type=int, default=5, help="earliest cut, flash operations")
    ap.add_argument("--last", type=int, default=450, help="latest cut, flash operations")
    ap.add_argument("--seed", type=int, default=None, help="random cut points")
    args = ap.parse_args()
    print("power cut after N flash operations, then a reboot without one\n%6s %13s %10s"
          % ("N", "acknowledged", "delivered"), flush=True)
    rows, failures = run(args)
    print("cuts: %d; acknowledged: %d; delivered: %d; failed cuts (an acknowledged message "
          "lost, or a crash): %d" % (len(rows) + len(failures), sum(r[1] for r in rows),
                                     sum(r[2] for r in rows), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

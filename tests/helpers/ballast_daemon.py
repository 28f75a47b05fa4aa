# tests/helpers/ballast_daemon.py - the daemon with a heap that a test can run short, for
# the low-memory tests (tests/test_smtps_limits.py). MicroPython only: CPython has no
# heap limit, and there heap.memory_low() stays False.
#
#     MICROPYPATH=<bundle>:.frozen micropython tests/helpers/ballast_daemon.py run -c FILE
#
# While the file named by $META1LITE_BALLAST exists, each heap.memory_low() call first
# fills the heap with ballast until less than heap.MIN_FREE_HEAP is free, so that the
# relay's own check then measures a real shortage; once the file is gone the next call
# drops the ballast. Written in the shared subset (it runs from the .mpy bundle).
# Must never change what the daemon decides: the wrapper always calls the original.
import os
import sys

BALLAST_ENV = "META1LITE_BALLAST"
BALLAST_BLOCKS = (512, 64, 16)  # bytes per ballast allocation; smaller ones fill the holes
BELOW_FLOOR = 2048              # free heap the ballast leaves, under heap.MIN_FREE_HEAP

_ballast = [None]               # the chain's head: [block, next]; linked, since a list
                                # grown to thousands of entries needs a run no full heap has


def _fill(heap):
    import gc
    gc.collect()
    for size in BALLAST_BLOCKS:
        try:
            while heap.heap_free() + heap.kept() > heap.MIN_FREE_HEAP - BELOW_FLOOR:
                _ballast[0] = [bytearray(size), _ballast[0]]
        except MemoryError:         # no run of that size is left: smaller blocks next
            pass


def install():
    """Wrap heap.memory_low if $META1LITE_BALLAST names a flag file."""
    flag = os.getenv(BALLAST_ENV)
    if not flag:
        return
    from meta1lite import durable, heap
    original = heap.memory_low

    def memory_low(headroom=0):
        if durable.exists(flag):
            _fill(heap)
            heap.measure_next()     # filled at once, faster than the relay could
        else:
            _ballast[0] = None
        return original(headroom)
    heap.memory_low = memory_low


def main():
    install()
    from meta1lite import __main__ as entry
    return entry.main()


if __name__ == "__main__":
    sys.exit(main())

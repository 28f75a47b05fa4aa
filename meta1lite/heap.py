# meta1lite.heap - compat's memory half: the MicroPython heap. How much is used and
# free, collecting early (gc.threshold), refusing new work when little is left,
# dropping one-shot modules, and unlocking a heap a Ctrl-C left locked. On CPython
# the heap figures are None and the rest no-ops, except forget_modules.
# Owns: those decisions' thresholds (MIN_FREE_HEAP, ROOMY_*, GC_*). Must never: hold
# protocol or queue logic, or allocate where it reports that allocation failed.
import gc
import sys
import time

from meta1lite.const import const


def forget_modules(names):
    """Drop one-shot modules (the config parser after start-up) so that, on the
    MicroPython unix port where bytecode lives in the heap, their memory returns."""
    for name in names:
        sys.modules.pop(name, None)
        parent, _, child = name.rpartition(".")
        package = sys.modules.get(parent)
        if package is not None and child in getattr(package, "__dict__", {}):
            delattr(package, child)
    gc.collect()


# A module imported for one piece of work (the spool's recovery) is dropped after it
# only where importing it again is cheap: a board, whose code is frozen in flash (an
# import makes its function objects, nothing more). From source (the unix port's
# tests) or the .mpy bundle (a router) it would be read, or compiled, again at each
# use: it stays. The board's boot (m1lboot) turns this on.
_drop_one_shots = [False]


def frozen_code():
    """Say that the relay's code is frozen into the firmware (a board's boot): modules
    imported for one piece of work are dropped after it (drop_one_shot)."""
    _drop_one_shots[0] = True


def drop_one_shot(names):
    """forget_modules(names), a module imported for one piece of work, where the code
    is frozen (frozen_code()); elsewhere, CPython included, what was imported stays."""
    if _drop_one_shots[0]:
        forget_modules(names)


MIN_FREE_HEAP = 16 * 1024       # free heap under which new mail is refused (MicroPython)
# gc.mem_free() walks the heap's whole allocation table: about 0.3 ms on the unix
# port's 2M heap, three times a message (10% of its CPU, perf). A figure at least
# ROOMY_FACTOR times what a check asks for is trusted for ROOMY_MS: the relay does
# not allocate that much so fast. A board's heap is never that roomy: it is measured
# at every check.
ROOMY_FACTOR = const(8)
ROOMY_MS = 100
_roomy = [None, 0]              # [ticks_ms when a roomy figure was measured, the figure]


def memory_low(headroom=0):
    """True if, after a collect, less than MIN_FREE_HEAP + headroom bytes of heap
    are free, counting the blocks Reserves keep for the relay's own work: too little
    to take new work (MicroPython). Always False on CPython."""
    need = MIN_FREE_HEAP + headroom
    if _roomy_lately(need):
        return False
    free = heap_free()
    if free is None:
        return False
    if free + kept() >= need:
        _roomy[0], _roomy[1] = time.ticks_ms(), free
        return False
    gc.collect()
    return heap_free() + kept() < need


def _roomy_lately(need):
    at, free = _roomy
    return (at is not None and free >= need * ROOMY_FACTOR
            and time.ticks_diff(time.ticks_ms(), at) < ROOMY_MS)


def measure_next():
    """Make the next memory_low() measure the heap (for a test that fills it at once,
    faster than the relay could)."""
    _roomy[0] = None


GC_EVERY_FRACTION = const(12)   # collect after 1/12 of the heap was allocated (MicroPython)
GC_EVERY_MIN = const(16 * 1024)  # ... but not more often than every 16K
# ... on heaps up to this size (boards). A larger heap (a router's: 1536K) is
# collected when full: every collection marks all that is live (on the unix port the
# bytecode too), and collecting every 1/12 of a 2M heap was a third of the unix
# port's CPU (perf; 130 -> 205 msg/s at 1536K without it, BENCHMARKS.md)
GC_EARLY_UP_TO = 1024 * 1024


def collect_often():
    """MicroPython, heaps up to GC_EARLY_UP_TO: collect garbage after every
    heap/GC_EVERY_FRACTION bytes allocated, not only when the heap is full. Freed
    holes low in the heap are then reused by the next small objects instead of
    scattering them over the free top, where the next 1K buffer or TLS record buffer
    would have needed a whole run: on the sim Pico W this took 100 messages over TLS
    at 192K from failing every run to passing every run (issue 8). No-op on CPython
    and on larger heaps."""
    if not hasattr(gc, "threshold"):
        return
    total = gc.mem_free() + gc.mem_alloc()
    if total <= GC_EARLY_UP_TO:
        gc.threshold(max(GC_EVERY_MIN, total // GC_EVERY_FRACTION))


def heap_used():
    """Bytes of heap in use (MicroPython gc.mem_alloc), or None on CPython."""
    return gc.mem_alloc() if hasattr(gc, "mem_alloc") else None


def heap_free():
    """Bytes of heap free (MicroPython gc.mem_free), or None on CPython."""
    return gc.mem_free() if hasattr(gc, "mem_free") else None


class Steps:
    """Heap in use after each step of a start-up (MicroPython; nothing on CPython):
    mark(name) after a step, then text() for the log, e.g. "imports 69232,
    queue +9008"."""

    def __init__(self):
        self.marks = [] if heap_free() is not None else None

    def mark(self, name):
        if self.marks is not None:
            gc.collect()
            self.marks.append((name, heap_used()))

    def text(self):
        out, last = [], None
        for name, used in self.marks or ():
            out.append("%s %s%d" % (name, "+" if last is not None else "", used - (last or 0)))
            last = used
        return ", ".join(out)


_reserves = []                  # every Reserve that keeps blocks (MicroPython)


def kept():
    """Bytes the Reserves hold for the relay's own work: free for memory_low."""
    total = 0
    for reserve in _reserves:
        total += reserve.kept()
    return total


def allocated_by(fn, *args):
    """(bytes of heap that fn(*args) leaves allocated, counted from a fresh collection,
    what fn returned) on MicroPython; (0, None) on CPython, where fn is not run."""
    if not hasattr(gc, "mem_alloc"):
        return 0, None
    gc.collect()                # not during fn: a collection there would under-count
    before = gc.mem_alloc()
    result = fn(*args)
    return max(0, gc.mem_alloc() - before), result


class Reserve:
    """Blocks of heap kept free for one kind of allocation that a fragmented heap may
    have no run for (MicroPython): call(fn, ...) runs fn, and while it fails with
    MemoryError, frees a block, collects and runs fn again, which then finds that
    block's run. keep(obj) holds what such a call made once it is closed: its run fits
    the next one exactly. refill() takes blocks of the measured size for what is still
    missing: first when the owner starts, then after a collection (a dropped object
    keeps its run until a collection, and the next small objects would split it). A
    LittleFS file handle carries a 1K cache in one block (1148 bytes on the sim Pico
    W): the delivery that could not open its segment failed at 128K while 60K were
    free. Holding and freeing a block allocates nothing (its slots are made here).
    Nothing kept on CPython or with size 0."""

    def __init__(self, size, count=1):
        self.size = size if heap_free() is not None else 0
        self.count = count
        self._slots = [None] * count
        self._held = 0              # _slots[:_held] are held
        if self.size:
            _reserves.append(self)

    def kept(self):
        """Bytes held in blocks now."""
        return self._held * self.size

    def keep(self, obj):
        """Hold obj, a closed object of the kind call(fn) makes, as one of the blocks if
        one is missing. Unlike refill() it needs no collection and no new run: a block
        of the measured size may find none where the closed object's own run is free
        (a LittleFS handle is 72 blocks of 16 bytes on the sim, its measured size 75,
        which counts small objects made with it)."""
        if self.size and self._held < self.count:
            self._slots[self._held] = obj
            self._held += 1

    def close(self):
        """Give the blocks back for good (their owner closed)."""
        self._slots = [None] * self.count
        self._held = 0
        self.count = 0
        if self in _reserves:
            _reserves.remove(self)

    def refill(self):
        """Take the missing blocks again (a collection first if one is missing)."""
        if not self.size or self._held >= self.count:
            return
        gc.collect()
        try:
            while self._held < self.count:
                self.keep(bytearray(self.size))
        except MemoryError:
            pass                # refilled after the next close

    def call(self, fn, *args):
        """fn(*args), run again in a freed block's run while it fails for memory.
        Never collects to refill (the owner refills after closing what used a block):
        a heap that cannot give a block back would be collected at every call."""
        while True:
            try:
                return fn(*args)
            except MemoryError:
                if not self._held:
                    raise
            self._held -= 1
            self._slots[self._held] = None
            gc.collect()


_UNLOCK_TRIES = const(3)        # collections tried by unlock_heap()


def unlock_heap():
    """MicroPython: a KeyboardInterrupt raised from an interrupt (stm32's second Ctrl-C;
    the unix port's SIGINT handler did it too until `run` gave SIGINT its default action)
    inside a collection ends that collection early with its "collecting" flag still
    set, which locks the heap: nothing could be allocated after it, not even the stop
    (measured on the unix port then: 6 of 48 Ctrl-Cs during deliveries). A new
    collection ends with the flag cleared (nothing was allocated since, so its marks
    are whole); another Ctrl-C can land in that one too, hence a few tries. True if
    the heap was locked."""
    tries = _UNLOCK_TRIES            # a while loop: range() would allocate
    while tries:
        try:
            bytearray(1)
            return tries < _UNLOCK_TRIES
        except MemoryError:
            gc.collect()
        tries -= 1
    return True

# heap: the MicroPython heap helpers, tested on CPython (where they keep nothing)
# and under the real MicroPython unix port (where the reserve meets a fragmented heap).
import gc

from meta1lite import heap

RUN = 1280          # the reserve's block, as the journal keeps it for a file handle
HOLE = 1100         # holes left in the heap, each too short for NEED
NEED = 1200         # what the fragmented heap must still place
PLUGS = 64          # at most this many runs of NEED bytes left after the holes
SLACK = 64          # small objects given back after filling the heap: holes for the
                    # small objects a call makes before its large one (as open() does)
SLACK_EVERY = 8     # ... one in this many, so that they lie apart
HANDLE_WORDS = 120  # a handle-like object: 976 bytes on 64 bits, 488 on 32


def test_reserve_places_what_a_fragmented_heap_cannot():
    reserve = heap.Reserve(RUN)
    if heap.heap_free() is None:            # CPython: no block, a plain call
        assert reserve.size == 0
        assert reserve.call(bytearray, NEED) == bytearray(NEED)
        return
    reserve.refill()                        # the block is taken (as the journal's start does)
    assert reserve.call(len, b"taken") == 5
    room = heap.heap_free() // HOLE + 1     # lists made once: growing one leaves runs
    holes, pins = [None] * room, [None] * room
    try:
        for i in range(room):               # the heap: HOLE bytes, a pinned object, ...
            holes[i] = bytearray(HOLE)
            pins[i] = bytearray(16)
    except MemoryError:
        pass
    for i in range(room):
        holes[i] = None
    gc.collect()
    plugs = [None] * PLUGS                  # runs that could still take NEED: filled
    try:
        for i in range(PLUGS):
            plugs[i] = bytearray(NEED)
    except MemoryError:
        pass
    free = heap.heap_free()
    got = reserve.call(bytearray, NEED)
    placed = len(got)
    got = None                              # closed and dropped: refill takes the run back
    reserve.refill()
    again = len(reserve.call(bytearray, NEED))
    pins = plugs = None
    gc.collect()
    assert free > 10 * NEED                 # room enough, only not in one run
    assert placed == NEED and again == NEED


def test_a_kept_object_refills_the_reserve_where_a_new_block_finds_no_run():
    # the journal keeps each closed LittleFS handle instead of refilling a block of the
    # measured size, which counts more than the handle (75 blocks against 72 on the
    # sim): on a full heap the hole a handle leaves is too short for a new block
    reserve = heap.Reserve(RUN)
    reserve.refill()
    if heap.heap_free() is None:            # CPython: nothing kept, plain calls
        reserve.keep(_handle())
        assert heap.kept() == 0 and len(reserve.call(_handle)) == HANDLE_WORDS
        return
    chain = _fill_heap(None)                # every run but the reserve's block
    got = reserve.call(_handle)             # the block freed for it: its run
    chain = _fill_heap(chain)               # what the handle left of RUN taken too
    reserve.keep(got)                       # closed: kept instead of a new block
    got = None
    reserve.refill()                        # nothing missing: no new block wanted
    kept = reserve.kept()
    chain = None
    gc.collect()
    reserve.close()
    assert kept == RUN


def _handle():
    # one allocation shorter than RUN, as a LittleFS handle is (a tuple's items are in it)
    return (None,) * HANDLE_WORDS


def _fill_heap(chain):
    # small objects until the heap is full, less a few (a call's argument tuple)
    try:
        while True:
            chain = [bytearray(16), chain]
    except MemoryError:
        pass
    link = chain
    for i in range(SLACK * SLACK_EVERY):    # scattered holes, none of them a run
        if link is None:
            break
        if i % SLACK_EVERY == 0:
            link[0] = None
        link = link[1]
    gc.collect()
    return chain


def test_reserve_passes_on_what_fails_with_every_block_freed():
    reserve = heap.Reserve(RUN, 2)
    reserve.refill()
    calls = []

    def never_fits():
        calls.append(1)
        raise MemoryError("allocating 5000 bytes")
    try:
        reserve.call(never_fits)
        raised = False
    except MemoryError:
        raised = True
    assert raised
    # with two blocks kept (MicroPython) the call was tried again after freeing each
    assert len(calls) == (3 if reserve.size else 1)


def test_blocks_kept_count_as_free_for_memory_low():
    # a relay whose only "missing" heap is the reserve it keeps for its own files
    # must not refuse mail for it (the sim at 160K refused every client, 320 bytes short)
    before = heap.kept()
    reserve = heap.Reserve(RUN, 2)
    reserve.refill()
    assert heap.kept() - before == (2 * RUN if reserve.size else 0)
    reserve.close()
    assert heap.kept() == before
    assert reserve.call(len, b"ab") == 2               # closed: a plain call


def test_steps_say_what_each_start_up_step_added():
    steps = heap.Steps()
    steps.mark("first")
    kept = bytearray(4096)
    steps.mark("second")
    text = steps.text()
    if heap.heap_free() is None:                    # CPython: nothing measured
        assert steps.marks is None and text == ""
        return
    first, second = text.split(", ")
    assert first.startswith("first ") and second.startswith("second +")
    assert int(second.split("+")[1]) >= len(kept)


def test_a_board_heap_is_collected_early_a_larger_one_when_full():
    if not hasattr(gc, "threshold"):                # CPython: nothing to set
        heap.collect_often()
        return
    saved = heap.GC_EARLY_UP_TO
    try:
        gc.threshold(-1)
        heap.collect_often()                        # this heap is a board's
        early = gc.threshold()
        gc.threshold(-1)
        heap.GC_EARLY_UP_TO = 1024                  # now it counts as a router's
        heap.collect_often()
        when_full = gc.threshold()
    finally:
        heap.GC_EARLY_UP_TO = saved
        gc.threshold(-1)
    total = gc.mem_free() + gc.mem_alloc()
    assert early == max(heap.GC_EVERY_MIN, total // heap.GC_EVERY_FRACTION)
    assert when_full == -1


BALLAST = 512       # bytes per ballast block that runs the heap short


def test_a_roomy_heap_figure_is_trusted_only_until_measured_again():
    if heap.heap_free() is None:                    # CPython: never low
        assert not heap.memory_low()
        return
    saved = heap.MIN_FREE_HEAP, heap.ROOMY_MS
    ballast = []
    try:
        heap.MIN_FREE_HEAP = heap.heap_free() // (2 * heap.ROOMY_FACTOR)
        heap.ROOMY_MS = 60000                       # no race with a slow machine
        heap.measure_next()
        assert not heap.memory_low()                # measured: roomy, remembered
        try:
            while heap.heap_free() >= heap.MIN_FREE_HEAP:
                ballast.append(bytearray(BALLAST))
                gc.collect()                        # the list's old tables count as free
        except MemoryError:
            pass
        trusted = heap.memory_low()                 # the roomy figure, still trusted
        heap.measure_next()
        measured = heap.memory_low()
    finally:
        heap.MIN_FREE_HEAP, heap.ROOMY_MS = saved
        ballast = None
        heap.measure_next()
    assert not trusted and measured

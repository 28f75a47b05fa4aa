# tls.TlsMemory: the heap a board keeps for mbedtls' record buffers (smtpc.tls_reserve),
# tested on CPython (where it keeps nothing) and under the real MicroPython unix port.
from meta1lite import tls
from meta1lite.compat import MICROPYTHON, asyncio

SOCKET_OBJECT = 288     # bytes: the TLS socket object mbedtls' buffers follow (the sim's)
LATER_OBJECTS = 8       # objects of that size the relay allocates after start-up


def test_tls_blocks_lie_above_what_the_relay_allocates_after_start():
    # mbedtls puts the TLS socket object in the lowest free run that fits it, just
    # before its buffers: the blocks freed for a handshake must not be that run, or
    # the buffer no longer fits there (ENOMEM at 144K on the sim Pico W)
    memory = tls.TlsMemory()
    if not MICROPYTHON:                 # CPython: nothing kept, no limit
        memory.configure(True)
        assert memory.headroom() == 0 and not memory._blocks
        return
    import uctypes
    start_up = _dense_start_up(uctypes.addressof)   # noqa: F841 - kept alive
    memory.configure(True)
    later = [bytearray(SOCKET_OBJECT) for _ in range(LATER_OBJECTS)]
    lowest_block = min(uctypes.addressof(block) for block in memory._blocks)
    highest_later = max(uctypes.addressof(obj) for obj in later)
    assert len(memory._blocks) == len(tls.TLS_RECORD_BUFFERS)
    assert memory.headroom() == tls.TLS_HANDSHAKE_HEAP
    assert highest_later < lowest_block, (highest_later, lowest_block)


def _dense_start_up(addressof):
    # the relay's start-up as the sim Pico W's heap map shows it: no free run below
    # the top one that fits a socket object (each one is plugged)
    import gc
    plugs = [None] * (gc.mem_free() // SOCKET_OBJECT)   # made first: never grows
    top = bytearray(SOCKET_OBJECT * LATER_OBJECTS)      # the top free run's start
    for i in range(len(plugs)):
        plug = bytearray(SOCKET_OBJECT)
        if addressof(plug) > addressof(top):
            break                       # every lower run that fits one is taken
        plugs[i] = plug
    return plugs, top


def test_a_handshake_frees_the_blocks_and_its_end_takes_them_back():
    memory = tls.TlsMemory()
    memory.configure(True)

    async def handshake():
        await memory.acquire()
        memory.make_room()              # just before mbedtls allocates its buffers
        freed = not memory._blocks
        memory.release()                # the connection closed
        return freed
    assert asyncio.run(handshake())
    assert len(memory._blocks) == (len(tls.TLS_RECORD_BUFFERS) if MICROPYTHON else 0)

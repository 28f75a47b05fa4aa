# meta1lite.tls - TLS on both runtimes, the half of compat.py that only the modules
# speaking TLS import: contexts for smtps and smtpc, STARTTLS on an open stream,
# and, on boards, heap kept for mbedtls (TlsMemory).
#
# Owns: PEM to DER (this MicroPython build loads DER), the verification settings
# (MicroPython has no system CA store: ca_file), STARTTLS (CPython:
# StreamWriter.start_tls; MicroPython: wrap the stream's socket), and the TLS slot
# of a board. Must never: verify nothing when verification was asked for, or hold
# the TLS slot past the connection that took it.
from meta1lite.compat import MICROPYTHON, asyncio
from meta1lite.const import const


def pem_to_der(text):
    """DER bytes of the first PEM block in `text` (str or bytes)."""
    import binascii
    if isinstance(text, bytes):
        text = text.decode()
    begin = text.find("-----BEGIN")
    if begin < 0:
        raise ValueError("no PEM block found")
    start = text.find("\n", begin) + 1
    end = text.find("-----END", start)
    if start <= 0 or end < 0:
        raise ValueError("unterminated PEM block")
    return binascii.a2b_base64("".join(text[start:end].split()))


def _read_file(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


def server_tls_context(certfile, keyfile):
    """An SSL context for smtps (STARTTLS and implicit TLS)."""
    import ssl
    if not MICROPYTHON:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile, keyfile)
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem_to_der(_read_file(certfile)), pem_to_der(_read_file(keyfile)))
    return ctx


def client_tls_context(verify=True, ca_file=None):
    """An SSL context for smtpc; verification uses ca_file (required on MicroPython)."""
    import ssl
    if not MICROPYTHON:
        ctx = ssl.create_default_context(cafile=ca_file)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify and ca_file:
        ctx.load_verify_locations(cadata=pem_to_der(_read_file(ca_file)))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


_STREAM_START_TLS = not MICROPYTHON and hasattr(asyncio.StreamWriter, "start_tls")  # 3.11+


async def start_tls(reader, writer, ctx, server_side, server_hostname=None):
    """Upgrade an open stream to TLS (STARTTLS); returns the new (reader, writer)."""
    if not MICROPYTHON:
        if not server_side:     # the server speaks after our ClientHello: all injected
            discard_plaintext(reader)
        if _STREAM_START_TLS:
            await writer.start_tls(ctx, server_hostname=None if server_side else server_hostname)
        else:
            await _start_tls_310(writer, ctx, server_side, server_hostname)
        return reader, writer
    kwargs = {"server_side": server_side, "do_handshake_on_connect": False}
    if not server_side and server_hostname:
        kwargs["server_hostname"] = server_hostname
    tls_memory.make_room()          # no await between this and the buffers' allocation
    sock = ctx.wrap_socket(writer.s, **kwargs)
    sock.setblocking(False)
    writer.s = sock
    return writer, writer


async def _start_tls_310(writer, ctx, server_side, server_hostname):
    # CPython 3.10 has no StreamWriter.start_tls(): the steps of 3.11's, by hand
    protocol = writer._protocol
    await writer.drain()
    transport = await asyncio.get_event_loop().start_tls(
        writer.transport, protocol, ctx, server_side=server_side,
        server_hostname=None if server_side else server_hostname)
    writer._transport = transport
    protocol._stream_writer = writer
    protocol._transport = transport
    protocol._over_ssl = True


# CPython 3.11+: an implicit-TLS connection (listen_tls) is accepted plain, reading
# paused as it is made, and its handshake runs in the session, after admission.
# 3.10's transport resumes reading after a pause made then (its reader is added
# after connection_made): there asyncio's own handshake comes first, as before.
HANDSHAKE_IN_SESSION = _STREAM_START_TLS


def discard_plaintext(reader, writer=None):
    """CPython: drop what sits in the stream's buffer beyond the core's last read.
    smtps calls it when STARTTLS is read, before its 220 goes out (the client's
    handshake can only follow the 220); smtpc before its handshake (the server's can
    only follow it). What was sent ahead would be read as if it came over TLS
    (command or reply injection, CVE-2011-0411); Postfix drops it too. With the
    writer (smtps), reading also pauses until start_tls resumes it: the ClientHello
    that follows the 220 waits in the socket, where the handshake finds it, however
    often the loop turns in between. MicroPython reads the socket directly: leftover
    bytes reach mbedtls and the handshake fails."""
    buffered = getattr(reader, "_buffer", None)
    if buffered:
        del buffered[:]
    if writer is not None and not MICROPYTHON:
        writer.transport.pause_reading()


# mbedtls' record buffers as a board's GC heap holds them: MicroPython's mbedtls
# config takes 16K in and 4K out, plus header, IV, MAC and padding, plus the
# tracked-allocation header, rounded up to 16-byte GC blocks. Kept as two blocks:
# one block of their sum was tried, but mbedtls may put the 4K buffer in a lower
# hole, other tasks then settle in the unused 4K of the block's hole, and the sum
# can no longer be taken back when the connection closes (ENOMEM at the next
# handshake); each buffer's own hole always comes back whole.
TLS_RECORD_BUFFERS = (16736, 4448)
# They are taken at the top of the heap at start, above a filler block freed then.
# mbedtls allocates the TLS socket object (its context inside, 18 blocks) just before
# the buffers, in the lowest free run it fits. Taken just above start-up's own
# objects (dense, no such run), the blocks left a buffer's own hole as the lowest
# run: the socket object took its start, the buffer no longer fitted (ENOMEM at
# 144K, benchmarks/board.py). A closed socket object's run does not help: it stays
# referenced for a while (stale pointers on the C stack). At the top, the runs of
# what the relay allocates at work lie below the blocks.
TLS_FILLER_STEP = const(1024)  # bytes: the filler's search step and the room left above
# What a handshake allocates besides the record buffers (handshake state, transform,
# session, the peer's certificate chain, ECDHE and signature arithmetic), kept free
# by refusing new mail below it (heap.memory_low). Measured on the sim
# (benchmarks/board.py): a verified handshake needs ~29K, its 21K of record buffers
# included; 16K leaves twice the rest.
TLS_HANDSHAKE_HEAP = const(16 * 1024)


class TlsMemory:
    """Heap kept for one TLS connection at a time (boards). mbedtls allocates its
    record buffers from the GC heap, and a fragmented heap has 100K free but no
    16K hole; blocks of exactly their sizes, freed just before a handshake and
    taken back (synchronously, before another task can allocate) into the holes
    the buffers leave when the connection closes, keep room for the next one. Off (CPython, routers): no reserve, no limit."""

    def __init__(self):
        self._blocks = None
        self._lock = None

    def configure(self, enabled):
        """Keep the blocks from now on, at the top of the heap (call before the queue
        index is built)."""
        enabled = enabled and MICROPYTHON
        self._lock = asyncio.Lock() if enabled else None
        filler = _filler() if enabled else None
        self._take()
        if filler is not None:
            del filler
            import gc
            gc.collect()            # free again before the relay measures its heap

    def headroom(self):
        """Heap (bytes) that new mail must leave free for the next handshake."""
        return TLS_HANDSHAKE_HEAP if self._lock is not None else 0

    def _take(self):
        blocks = []
        for size in TLS_RECORD_BUFFERS if self._lock is not None else ():
            block = _block(size)    # None: taken again when the next TLS connection ends
            if block is not None:
                blocks.append(block)
        self._blocks = blocks

    async def acquire(self):
        """Wait for the TLS slot (then start_tls frees the blocks)."""
        if self._lock is not None:
            await self._lock.acquire()

    def make_room(self):
        """Free the blocks just before mbedtls allocates its buffers: no other task
        may run in between, or it takes the holes."""
        if self._blocks:
            self._blocks = None
            import gc
            gc.collect()

    def release(self):
        """The TLS connection is closed: take the blocks back, free the slot."""
        if self._lock is None or not self._lock.locked():
            return
        import gc
        gc.collect()
        self._take()
        self._lock.release()


def _filler():
    # a block filling the largest free run (found within a step) but for the record
    # blocks and a step at its top: the allocator, first-fit, puts them above it
    import gc
    size = gc.mem_free()
    while size > 0 and _block(size) is None:
        size -= TLS_FILLER_STEP
    size -= sum(TLS_RECORD_BUFFERS) + TLS_FILLER_STEP
    gc.collect()                    # frees the block that found the run
    return _block(size) if size > 0 else None


def _block(size):
    try:
        return bytearray(size)
    except MemoryError:
        return None


tls_memory = TlsMemory()

# meta1lite.listener - the TCP listener of smtps on both runtimes (the half of
# compat.py that only a server needs).
#
# Owns: binding and the accept loop. CPython: asyncio.start_server. MicroPython:
# asyncio's own loop (extmod/asyncio/stream.py Server._serve) ends for good when a
# MemoryError hits it between accept() and the connection's task, and the port
# never accepts again (issue 11: `scripts/load.py --runtime micropython --idle 200`);
# this copy of it drops that one connection instead. Must never: stop accepting
# while the server is open, or hold a connection it could not start.
from meta1lite import compat, streams
from meta1lite.const import const

asyncio = compat.asyncio
LOG = const("smtps")
_POLL_FD_BASE = const(1 << 24)  # fd numbers that are never real, to grow the poller with
_POLL_SLOTS_SPARE = const(8)  # beyond the configured connections: listeners, control, DNS
ACCEPT_PAUSE_S = const(1)   # after a connection dropped for want of memory (MicroPython)


async def start_server(handler, host, port, backlog, ssl=None, on_full=None):
    """A TCP server calling handler(reader, writer) per connection. MicroPython: not
    asyncio's own accept loop, which ends for good when a MemoryError hits it (no
    room for the connection's stream or task: the port then never accepts again);
    this one drops that connection, calls on_full() (smtps closes its idlest
    session), logs it, pauses ACCEPT_PAUSE_S and goes on."""
    if not compat.MICROPYTHON:
        return await asyncio.start_server(handler, host, port, backlog=backlog, ssl=ssl)
    import socket
    info = socket.getaddrinfo(host, port)[0]
    sock = socket.socket(info[0])
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(info[-1])
    sock.listen(backlog)
    server = _GuardedServer()
    server.on_full = on_full
    server.task = asyncio.create_task(server._serve(sock, handler, ssl))
    await asyncio.sleep(0)          # _serve runs before anyone can close the server
    return server


def reserve_poll_slots(cfg):
    """MicroPython: grow asyncio's poller now, while the heap has room, for every
    socket the configuration allows at once. A MemoryError while the poller grows its
    tables later leaves an entry half made, and the next poll dereferences it (a
    SIGSEGV under load; extmod/modselect.c: "This case is not handled"); grown
    tables are reused, so registering a socket then needs one small object only.
    Call inside the running event loop. No-op on CPython."""
    if not compat.MICROPYTHON:
        return
    count = (cfg["smtps"]["max_connections"] + cfg["smtpc"]["max_connections"]
             + len(cfg["smtps"]["listen"]) + len(cfg["smtps"]["listen_tls"]) + _POLL_SLOTS_SPARE)
    poller = _core._io_queue.poller
    slots = _poll_placeholders(count)
    for slot in slots:
        poller.register(slot, 0)
    for slot in slots:
        poller.unregister(slot)


def _poll_placeholders(count):
    # what the poller takes: the unix port polls file descriptors and takes plain
    # ints (MICROPY_PY_SELECT_POSIX_OPTIMISATIONS, which also grow its pollfd array;
    # such a build has no select.select); a board takes stream objects only, and an
    # int there raises after its entry is made, leaving the poller broken
    import select
    if not hasattr(select, "select"):
        return range(_POLL_FD_BASE, _POLL_FD_BASE + count)
    import io
    return [io.BytesIO() for _ in range(count)]


if compat.MICROPYTHON:
    import asyncio.core as _core  # _io_queue is read at each use: run() renews it
    from asyncio.stream import Server as _Server
    from asyncio.stream import Stream as _Stream

    class _GuardedServer(_Server):
        async def _serve(self, s, cb, ssl):
            self.state = False
            while True:
                try:
                    yield _core._io_queue.queue_read(s)
                except _core.CancelledError as exc:
                    s.close()
                    if self.state:          # closed on purpose
                        return
                    raise exc
                except MemoryError:         # no room to wait on the socket
                    streams.forget_io_wait(s)
                    await self._pause()
                    continue
                try:
                    s2, addr = s.accept()
                except OSError:
                    continue
                except MemoryError:         # no room for the new socket object
                    await self._pause()
                    continue
                try:
                    _connection(s2, addr, cb, ssl)
                except MemoryError:
                    s2.close()
                    await self._pause()

        async def _pause(self):
            compat.log.log("error", LOG, "out of memory: a new connection dropped; accepting"
                           " again in %ds" % ACCEPT_PAUSE_S)
            try:
                if self.on_full is not None:
                    self.on_full()
            except MemoryError:
                pass
            await compat.sleep(ACCEPT_PAUSE_S)

    def _connection(s2, addr, cb, ssl):
        streams.no_delay(s2)
        if ssl:
            try:
                s2 = ssl.wrap_socket(s2, server_side=True, do_handshake_on_connect=False)
            except OSError:
                s2.close()
                return
        s2.setblocking(False)
        stream = _Stream(s2, {"peername": addr})
        asyncio.create_task(cb(stream, stream))

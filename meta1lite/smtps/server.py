# meta1lite.smtps.server - MeTA1's SMTP server module: the listeners of
# smtps.listen and smtps.listen_tls, admission, and an orderly stop.
#
# Owns: opening the listeners (implicit TLS on listen_tls), the connection limits
# (max_connections, max_connections_per_client: 421 4.7.0), the per-configuration
# policy objects every session consults (relay policy, message rate, TLS context,
# AUTH users and lockout), and the stop (sessions end before the loop does).
# Must never: speak SMTP itself (session.py does), or let a refused client cost
# more than one reply.
from meta1lite import compat, heap, listener, netaddr, streams, tls
from meta1lite.const import const
from meta1lite.proto import replies
from meta1lite.smtps.policy import RateLimiter, RelayPolicy
from meta1lite.smtps.session import Session

asyncio = compat.asyncio
LOG = const("smtps")
_LISTEN_BACKLOG_MIN = const(16)  # pending connections the kernel may queue per listener
STOP_POLL_S = 0.05              # at stop: sessions get _STOP_POLLS * STOP_POLL_S to end
_STOP_POLLS = const(100)
_SESSION_HEAP = const(8 * 1024)  # heap a session may need: ~4.5K idle (unix port), plus a
                                # message in flight and room for fragmentation
_EVICT_MIN_IDLE_S = const(2)    # when full, a session waiting on its client this long
                                # (real seconds since its last command) may be closed
# a session yields (421 at its next MAIL) to a client refused for lack of heap since
# its last MAIL was accepted, in the last TURN_S seconds: that client waits its turn
TURN_S = 3


class SmtpServer:
    """smtps: every listener of smtps.listen and smtps.listen_tls."""

    def __init__(self, cfg, spool, qmgr=None, smar=None):
        self.spool = spool
        self.qmgr = qmgr
        self.smar = smar
        self.servers = []
        self.bound = []
        self.sessions = set()
        self.per_client = {}
        self.refusals = 0           # clients refused for lack of heap, counted
        self.refused_at = None      # real_monotonic() of the last one
        self.rate = self.lockout = None
        self.reload(cfg)

    def reload(self, cfg):
        """Apply a (new) configuration, all of it or (an exception) none of it;
        listeners and open sessions stay as they are, the counters of the clients
        seen so far (message rates, AUTH lockouts) carry over."""
        opts = cfg["smtps"]
        tls_ctx = _tls_context(opts)
        users, lockout = _auth(opts)
        rate = RateLimiter(opts["max_messages_per_client_per_minute"])
        if self.rate is not None:
            rate.windows = self.rate.windows
        if lockout is not None and self.lockout is not None:
            lockout.failures = self.lockout.failures
        self.cfg, self.opts, self.hostname = cfg, opts, cfg["hostname"]
        self.rate, self.policy, self.tls_ctx = rate, RelayPolicy(opts, self.smar), tls_ctx
        self.users, self.lockout = users, lockout
        self.dummy_hash = _dummy_hash(users)         # derived for unknown users
        self.max_sessions = _session_cap(opts["max_connections"])

    async def start(self):
        """Open every listener (raises OSError if an address cannot be bound)."""
        for host, port in self.opts["listen"]:
            await self._listen(host, port, None)
        for host, port in self.opts["listen_tls"]:
            if self.tls_ctx is None:
                raise OSError("smtps.listen_tls needs smtps.tls { certificate; key; }")
            await self._listen(host, port, self.tls_ctx)

    async def _listen(self, host, port, ctx):
        implicit = ctx is not None
        # CPython 3.11+: the implicit-TLS handshake runs in the session, after the
        # connection limits admitted it (asyncio's own ran before them, unbounded)
        late = ctx if implicit and tls.HANDSHAKE_IN_SESSION else None

        def accept(reader, writer):
            # called as the connection is made (CPython): the ClientHello must stay in
            # the socket until the handshake starts, or asyncio reads it as plaintext
            if late is not None:
                writer.transport.pause_reading()
            return self._accept(reader, writer, implicit, late)
        server = await listener.start_server(accept, host, port, self._backlog(),
                                             None if late else ctx, self._evict)
        self.servers.append(server)
        self.bound.append(_bound_address(server, host, port))

    def _backlog(self):
        # MicroPython's default listen backlog is 5: with more clients the kernel
        # drops SYNs and they retry seconds later. Queue as many as we serve.
        return max(_LISTEN_BACKLOG_MIN, self.opts["max_connections"])

    def endpoints(self):
        """(host, port) of every listener, with the real port where 0 was asked."""
        return list(self.bound)

    async def stop(self):
        """Close the listeners and end the sessions in progress (421)."""
        for server in self.servers:
            server.close()
        for session in list(self.sessions):
            session.stop()
        self.servers = []
        for _ in range(_STOP_POLLS):     # let them end (a cancelled session is an error)
            if not self.sessions:
                break
            await asyncio.sleep(STOP_POLL_S)

    async def _accept(self, reader, writer, implicit_tls, handshake_ctx):
        try:
            await self._serve_client(reader, writer, implicit_tls, handshake_ctx)
        except MemoryError:         # before its session ran: refused, never left open
            compat.log.log("error", LOG, "out of memory: a new connection refused")
            await self._turn_away(writer, replies.LOW_MEMORY)

    async def _serve_client(self, reader, writer, implicit_tls, handshake_ctx):
        ip = streams.peer_address(writer)[0]
        client = netaddr.client_key(ip)     # per-client limits: an IPv6 client by prefix
        refusal = self._admission(client) if self.spool is not None else replies.SHUTTING_DOWN
        if refusal is not None:
            compat.log.log("warning", LOG, "%s from [%s]: refused" % (replies.parts(refusal)[2], ip))
            await self._turn_away(writer, refusal)
            return
        try:
            session = Session(self, reader, writer, ip, implicit_tls, handshake_ctx)
        except MemoryError:         # the idlest session makes room for the next client
            compat.log.log("error", LOG, "out of memory: refusing [%s]" % ip)
            self._evict()
            await self._turn_away(writer, replies.LOW_MEMORY)
            return
        session.client = client
        self.sessions.add(session)
        self.per_client[client] = self.per_client.get(client, 0) + 1
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]

    def _admission(self, client):
        if self.per_client.get(client, 0) >= self.opts["max_connections_per_client"]:
            return replies.TOO_MANY_FROM_CLIENT
        low = heap.memory_low(tls.tls_memory.headroom())
        if (low or self._live() >= self.max_sessions) and not self._evict():
            return replies.LOW_MEMORY if low else replies.TOO_MANY_CONNECTIONS
        return None

    async def _turn_away(self, writer, reply):
        # a new connection refused; one refused for lack of heap waits for its turn
        if reply is replies.LOW_MEMORY:
            self.refused_for_memory()
        await _refuse(writer, reply)

    def refused_for_memory(self):
        """A client was refused for lack of heap: sessions that had a turn yield."""
        self.refusals += 1
        self.refused_at = compat.real_monotonic()

    def refused_since(self, mark):
        """True if a client was refused for lack of heap since `mark` (self.refusals
        when a session's last turn began; a count, since a board's clock may step
        whole seconds) and within TURN_S: it waits for its turn."""
        return (self.refusals > mark and self.refused_at is not None
                and compat.real_monotonic() - self.refused_at < TURN_S)

    def _live(self):
        # sessions not being stopped (counted: no list of them on a full heap)
        count = 0
        for session in self.sessions:
            if not session.stopping:
                count += 1
        return count

    def _evict(self):
        # a full server makes room: the session that has waited longest on its
        # client since its last command (slowloris, idle keep-alives) gets 421 and
        # is closed; False if every session is busy or recently active
        now = compat.real_monotonic()
        idlest = None
        for session in self.sessions:
            if not session.stopping and session.reading and now - session.progress >= _EVICT_MIN_IDLE_S:
                if idlest is None or session.progress < idlest.progress:
                    idlest = session
        if idlest is None:
            return False
        compat.log.log("warning", LOG, "server full: closing the idlest session, unknown[%s],"
                       " idle %.0fs" % (idlest.ip, now - idlest.progress))
        idlest.stop(replies.EVICTED)
        # MicroPython's Stream.close() does nothing: the socket closes in wait_closed()
        asyncio.create_task(streams.close_stream(idlest.writer))
        return True

    # --- policy, used by sessions (relaypolicy.RelayPolicy decides) -----------
    def trusted(self, ip, authenticated):
        """May this client relay to any domain?"""
        return self.policy.trusted(ip, authenticated)

    async def check_password(self, user, password):
        """True if the password is user's; as slow for unknown users, never blocking."""
        from meta1lite.smtps import authdb
        return await authdb.verify_user(self.users, self.dummy_hash, user, password)


def _tls_context(opts):
    opts = opts.get("tls") or {}
    if not opts.get("certificate"):
        return None
    return tls.server_tls_context(opts["certificate"], opts["key"])


def _auth(opts):
    # authdb is imported only with AUTH users (a board without them keeps its 1.1K)
    auth = opts.get("auth") or {}
    if not auth.get("users"):
        return None, None
    from meta1lite.smtps import authdb
    users = authdb.load_users(auth["users"])
    return users, authdb.Lockout(auth["max_failures"], auth["lockout"])


def _dummy_hash(users):
    if users is None:
        return None
    from meta1lite.smtps import authdb
    return authdb.dummy_hash(users)


async def _refuse(writer, reply):
    try:
        await streams.write_all(writer, replies.reply_bytes(reply))
    except Exception:  # noqa: BLE001 - the client may be gone already
        pass
    await streams.close_stream(writer)


def _session_cap(configured):
    # MicroPython: no more sessions than the free heap holds (_SESSION_HEAP each), so
    # that idle connections are evicted for a new client before the heap runs out
    free = heap.heap_free()
    if free is None or free // _SESSION_HEAP >= configured:
        return configured
    cap = max(1, free // _SESSION_HEAP)
    compat.log.log("warning", LOG, "max_connections %d: %d fit the heap (%d bytes free, "
                   "%d per session)" % (configured, cap, free, _SESSION_HEAP))
    return cap


def _bound_address(server, host, port):
    sockets = getattr(server, "sockets", None)
    if sockets:
        name = sockets[0].getsockname()
        return (host, name[1])
    return (host, port)

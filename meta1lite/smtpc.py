# meta1lite.smtpc - the SMTP client module: asyncio I/O around proto.smtp_client.
#
# Owns: connecting to a route's hops in order, implicit TLS (port 465), STARTTLS
# per route.tls (opportunistic TLS is encryption without verification and falls
# back to clear text on the same host if the handshake fails, as Postfix's "may";
# required TLS verifies per route.tls_verify and never sends in clear), AUTH with
# route.credentials, several messages over one connection, the RFC 5321 timeouts
# of the core's phase (bounded by smtpc.io_timeout), streaming bodies from the
# spool with the envelope sender and the From: header rewritten as the route
# says, and per-recipient Results. Must never: write the spool, log a password,
# send the final dot of a body it could not read completely, or log the
# per-recipient status lines (qmgr does: it knows the delays).
#
# Rewrites are done here, from the route: the envelope sender becomes
# route.rewrite_sender (never for the null sender <> of bounces), and the From:
# header gets job.rewrite_from, or route.rewrite_sender when
# route.rewrite_from_header is set. A Job may carry them already; both are idempotent.
from meta1lite import compat, headers, streams, tls
from meta1lite.const import const
from meta1lite.proto import smtp_client as core
from meta1lite.status import DEFERRED, SENT

asyncio = compat.asyncio
LOG = const("smtpc")
IMPLICIT_TLS_PORT = 465
CONNECT_TIMEOUT_S = const(30)   # Postfix's smtp_connect_timeout
_TLS_HANDSHAKE_TIMEOUT_S = const(60)  # Postfix's smtp_starttls_timeout is 300; a handshake is small
NO_RELAY = const("none")
DEBUG = compat.LEVELS["debug"]  # the log level of state changes (not made above it)
_IO_ERRORS = (OSError, ValueError, EOFError) + compat.TIMEOUT_ERRORS


class Job:
    """One queued message for one destination.

    rcpts: list of (index, address); body: a callable returning a generator of
    bytes chunks (CRLF lines, not dot-stuffed; closed when not read to its end,
    spool.read_body's); rewrite_from: None or the address
    for the From: header."""

    def __init__(self, queue_id, sender, rcpts, size=None, eightbit=False, body=None,
                 rewrite_from=None):
        self.queue_id = queue_id
        self.sender = sender
        self.rcpts = rcpts
        self.size = size
        self.eightbit = eightbit
        self.body = body
        self.rewrite_from = rewrite_from


class Result:
    """The outcome for one recipient: status 'sent' | 'deferred' | 'bounced'.

    code: the server's reply code, or 0 when this client decided (no connection,
    TLS or AUTH refused, 8-bit to a 7-bit server, ...); enhanced: 'X.Y.Z'; text:
    the server's reply ('host H[ip] said: 550 5.1.1 ...') or our reason; relay:
    'host[ip]:port' or 'none'."""

    def __init__(self, index, status, code, enhanced, text, relay):
        self.index = index
        self.status = status
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.relay = relay

    def __repr__(self):
        return "Result(%d, %s, %d %s, %r, %s)" % (self.index, self.status, self.code,
                                                  self.enhanced, self.text, self.relay)


def envelope_sender(route, job):
    """The MAIL FROM address for job on route (route.rewrite_sender, except for <>)."""
    if route.rewrite_sender and job.sender:
        return route.rewrite_sender
    return job.sender


def from_rewrite(route, job):
    """The address for the From: header, or None to leave the header alone."""
    if job.rewrite_from:
        return job.rewrite_from
    if route.rewrite_from_header and route.rewrite_sender and job.sender:
        return route.rewrite_sender
    return None


def _default_enhanced(code):
    return "%d.0.0" % (code // 100) if code else "4.0.0"


class SmtpClient:
    """smtpc: delivers jobs to a route's hops (see deliver())."""

    def __init__(self, cfg):
        self.contexts = {}
        self.reload(cfg)

    def reload(self, cfg):
        """Apply a (new) configuration."""
        self.helo = cfg["hostname"]
        self.io_timeout = cfg["smtpc"]["io_timeout"]
        self.contexts = {}

    def tls_context(self, route, verify):
        """A client TLS context (cached); ValueError if verification is impossible here."""
        key = (verify, route.ca_file)
        ctx = self.contexts.get(key)
        if ctx is None:
            if verify and not route.ca_file and compat.MICROPYTHON:
                raise ValueError("certificate verification needs smtpc.ca_file on this "
                                 "platform (no system CA store)")
            ctx = tls.client_tls_context(verify, route.ca_file)
            self.contexts[key] = ctx
        return ctx

    async def deliver(self, route, hops, jobs, on_result=None):
        """Deliver jobs over one connection to the first hop that takes them.
        on_result(job, [Result]): awaited as each job's transaction ends (qmgr records
        it at once: a crash later in the batch does not send it again).

        Returns {queue_id: [Result per recipient]}. A hop that cannot be reached,
        greets with an error, lacks required TLS or refuses AUTH is skipped; jobs
        left when every hop failed are deferred with the last error."""
        results = {}
        failure = (core.LOCAL_CODE, "4.4.1", "no next hop to try", NO_RELAY)
        if route.error:
            failure = (core.LOCAL_CODE, "4.3.5", route.error, NO_RELAY)
            hops = ()
        for hop in hops:
            left = [job for job in jobs if job.queue_id not in results]
            if not left:
                break
            session = _Session(self, route, hop, left, results, route.tls, on_result)
            await session.run()
            if session.tls_failed and route.tls == core.TLS_OPPORTUNISTIC:
                left = [job for job in left if job.queue_id not in results]
                session = _Session(self, route, hop, left, results, core.TLS_OFF, on_result)
                await session.run()
            failure = session.failure or failure
        for job in jobs:
            if job.queue_id not in results:
                results[job.queue_id] = [Result(i, DEFERRED, failure[0], failure[1], failure[2],
                                                failure[3]) for i, _ in job.rcpts]
        return results


class _Session:
    """One connection to one hop, carrying as many of the jobs as it can."""

    def __init__(self, client, route, hop, jobs, results, tls_mode, on_result=None):
        self.client = client
        self.on_result = on_result
        self.route = route
        self.hop = hop
        self.jobs = list(jobs)
        self.results = results
        self.tls_mode = tls_mode
        self.relay = "%s[%s]:%d" % (hop.host, hop.ip, hop.port)
        self.qid = jobs[0].queue_id
        self.failure = None           # (code, enhanced, text, relay) of a session-level error
        self.tls_failed = False
        self.tls_pending = False      # between the handshake and the first reply over TLS
        self.auth_sent = False
        self.greeted = False
        self.io_error = None          # why the connection ended, when it was not the server
        self.dead = False
        self.current = None
        self.reader = self.writer = None
        self.conn = None
        self.preread = b""
        self.tls_slot = False         # holds tls.tls_memory's slot

    def _log(self, level, text):
        compat.log.log(level, LOG, "%s: %s" % (self.qid, text))

    async def run(self):
        implicit = self.hop.port == IMPLICIT_TLS_PORT
        try:
            if implicit:
                await self._tls_slot()
            if not await self._connect(implicit):
                return
            try:
                self.conn = core.ClientConnection(self.client.helo, tls=self.tls_mode,
                                                  tls_active=implicit,
                                                  credentials=self.route.credentials,
                                                  state_events=compat.log.threshold <= DEBUG)
                await self._converse()
            finally:
                await streams.close_stream(self.writer)
        finally:
            if self.tls_slot:
                tls.tls_memory.release()

    async def _tls_slot(self):
        """Boards: wait for the one TLS connection allowed (smtpc.tls_reserve)."""
        await tls.tls_memory.acquire()
        self.tls_slot = True

    async def _connect(self, implicit):
        try:
            ctx = self._context()[0] if implicit else None
            if implicit:
                tls.tls_memory.make_room()
            coro = streams.open_connection(self.hop.ip, self.hop.port, ctx, self.hop.host)
            self.reader, self.writer, self.preread = await compat.wait_for(
                coro, min(CONNECT_TIMEOUT_S, self.client.io_timeout))
            return True
        except _IO_ERRORS as exc:
            text = "connect to %s: %s" % (self.relay, _describe(exc))
            self._log("info", text)
            self.failure = (core.LOCAL_CODE, "4.4.1", text, NO_RELAY)
            return False

    def _context(self):
        verify = self.route.tls == core.TLS_REQUIRED and self.route.tls_verify
        return self.client.tls_context(self.route, verify), verify

    async def _converse(self):
        conn = self.conn
        while True:
            ev = conn.next_event()
            if ev is core.NEED_DATA:
                await self._read()
            elif isinstance(ev, core.Closed):
                return
            else:
                await self._handle(ev)

    async def _handle(self, ev):
        if isinstance(ev, core.Greeting):
            self.greeted = True
        elif isinstance(ev, core.Send):
            self.auth_sent = self.auth_sent or ev.sensitive or ev.data.startswith(b"AUTH ")
            await self._write(ev.data)
        elif isinstance(ev, core.Capabilities):
            self.tls_pending = False
        elif isinstance(ev, core.NeedTLS):
            await self._starttls()
        elif isinstance(ev, core.Ready):
            await self._next_job()
        elif isinstance(ev, core.ReadyForBody):
            await self._send_body()
        elif isinstance(ev, core.TransactionResult):
            job = self._record(ev)
            if self.on_result is not None:
                await self.on_result(job, self.results[job.queue_id])
        elif isinstance(ev, core.ConnectionFailed):
            self._failed(ev.code, ev.enhanced, ev.text)
        elif isinstance(ev, core.ProtocolError):
            self._log("warning", "protocol error from %s: %s" % (self.relay, ev.text))
        elif isinstance(ev, core.StateChange):
            self._log("debug", "%s: %s -> %s (%s)" % (self.relay, ev.old, ev.new, ev.cause))

    # --- I/O ---
    def _timeout(self, phase_timeout=None):
        wait = phase_timeout or self.conn.timeout() or self.client.io_timeout
        return min(wait, self.client.io_timeout)

    async def _read(self):
        data, self.preread = self.preread, b""
        if not self.dead and not data:
            timeout = self._timeout()
            try:
                data = await streams.read_now(self.reader, timeout)
            except _IO_ERRORS as exc:
                self._io_failed(exc, "reading from", timeout)
        if not data:
            self.dead = True
        self.conn.receive_data(data)        # a view of streams.read_now's: copied here

    async def _write(self, data):
        if not data or self.dead:
            return
        timeout = self._timeout(core.TIMEOUT_DATA_BLOCK if self.current else None)
        try:
            await streams.write_within(self.writer, data, timeout)
        except _IO_ERRORS as exc:
            self._io_failed(exc, "writing to", timeout)

    def _io_failed(self, exc, doing, timeout):
        self.dead = True
        if not self.greeted:                     # MicroPython: a refused connect shows here
            what = "connect to %s: %s" % (self.relay, _describe(exc))
        elif compat.is_timeout(exc):
            what = "timeout after %ds %s %s" % (timeout, doing, self.relay)
        else:
            what = "lost connection %s %s: %s" % (doing, self.relay, _describe(exc))
        if self.tls_pending:
            self.tls_failed = True
            what = "TLS handshake with %s failed: %s" % (self.relay, _describe(exc))
        self.io_error = self.io_error or what

    async def _starttls(self):
        await self._tls_slot()
        try:
            ctx, verify = self._context()
            self.reader, self.writer = await compat.wait_for(
                tls.start_tls(self.reader, self.writer, ctx, False, self.hop.host),
                min(_TLS_HANDSHAKE_TIMEOUT_S, self.client.io_timeout))
        except _IO_ERRORS as exc:
            self.tls_pending = True
            return self._io_failed(exc, "in TLS handshake with", _TLS_HANDSHAKE_TIMEOUT_S)
        self.tls_pending = True
        await self._write(self.conn.tls_started())
        self._log("info", "%s TLS connection established to %s" % (
            "Verified" if verify else "Anonymous", self.relay))

    # --- transactions ---
    async def _next_job(self):
        while self.jobs and not self.dead:
            job = self.jobs.pop(0)
            if not job.rcpts:
                self.results[job.queue_id] = []
                continue
            self.current = job
            sender = envelope_sender(self.route, job)
            addresses = [address for _, address in job.rcpts]
            return await self._write(self.conn.start_transaction(
                job.queue_id, sender, addresses, job.size, job.eightbit))
        await self._write(self.conn.quit())

    async def _send_body(self):
        job = self.current
        address = from_rewrite(self.route, job)
        rewriter = headers.FromRewriter(address) if address else None
        body = None
        try:
            body = job.body()
            for chunk in body:
                if rewriter is not None:
                    chunk = rewriter.feed(chunk)
                await self._write(self.conn.encode_body_chunk(chunk))
                if self.dead:
                    return
            if rewriter is not None:
                await self._write(self.conn.encode_body_chunk(rewriter.finish()))
        except Exception as exc:  # noqa: BLE001 - an unreadable body must never get its dot
            self.dead = True
            self.io_error = "cannot read the queued message: %s" % _describe(exc)
            self._log("warning", self.io_error)
            return
        finally:
            if body is not None:
                body.close()    # MicroPython never closes a dropped generator: its pooled
                                # buffer and file would wait for a collection
        await self._write(self.conn.end_body())

    def _text(self, code, enhanced, text, status=None):
        if code == core.LOCAL_CODE:
            return self.io_error if enhanced == "4.4.2" and self.io_error else text
        reply = "%d %s %s" % (code, enhanced, text)
        return reply if status == SENT else "host %s[%s] said: %s" % (
            self.hop.host, self.hop.ip, reply)

    def _record(self, ev):
        job = self.current
        self.current = None
        out = []
        for i, rcpt in enumerate(ev.results):
            enhanced = rcpt.enhanced or _default_enhanced(rcpt.code)
            text = self._text(rcpt.code, enhanced, rcpt.text, rcpt.status)
            out.append(Result(job.rcpts[i][0], rcpt.status, rcpt.code, enhanced, text, self.relay))
        self.results[job.queue_id] = out
        return job

    def _failed(self, code, enhanced, text):
        enhanced = enhanced or _default_enhanced(code)
        if code == core.LOCAL_CODE:
            text = self.io_error if enhanced == "4.4.2" and self.io_error else \
                "%s (%s)" % (text, self.relay)
        elif self.auth_sent and not self.conn.authenticated:
            text = "SASL authentication failed; server %s[%s] said: %d %s %s" % (
                self.hop.host, self.hop.ip, code, enhanced, text)
        else:
            text = self._text(code, enhanced, text)
        self._log("info", text)
        self.failure = (code, enhanced, text, self.relay if self.greeted else NO_RELAY)


def _describe(exc):
    return "timed out" if compat.is_timeout(exc) else (str(exc) or type(exc).__name__)

# meta1lite.smtps.session - one SMTP connection: the asyncio I/O around the server
# core (proto/smtp_server.py) and what smtps decides for it.
#
# Owns: reads (bounded, io_timeout), batched writes of replies, STARTTLS, the
# answers to the core's decisions (MAIL: queue space and message rate; RCPT: the
# relay policy; AUTH: the users file with lockout), streaming DATA into the spool
# with the Received:/Date:/Message-ID: fields, and the Postfix-shaped log lines of
# a session. Must never: answer 250 to the final dot before spool.commit returned
# (the message is durable), hold a message in RAM, or let a client outside
# relay_from reach a non-local domain.
from meta1lite import compat, headers, heap, netaddr, streams, tls
from meta1lite.const import const
from meta1lite.proto import replies
from meta1lite.proto import smtp_server as core
from meta1lite.spool import TOO_BIG, SpoolFull

LOG = const("smtps")
_AUTH_FAILURE_DELAY_S = const(2)  # pause before answering a failed AUTH (slows guessing)
DEBUG = compat.LEVELS["debug"]  # the log level of state changes (not made above it)
LOOPBACK = (netaddr.Network("127.0.0.0/8"), netaddr.Network("::1/128"))


class Session:
    """One SMTP connection: reads, feeds the core, acts on its events."""

    def __init__(self, server, reader, writer, ip, implicit_tls, handshake_ctx=None):
        self.server = server
        self.handshake_ctx = handshake_ctx      # implicit TLS still to start (CPython)
        self.opts = server.opts
        self.reader = reader
        self.writer = writer
        self.ip = ip
        self.client = ip            # the per-client limits' key (smtps.server sets it)
        self.out = []
        self.msg = None             # the transaction's MessageWriter
        self.stats = {}
        self.sender = None
        self.rcpts = None           # from MAIL to the end of the transaction
        self.scanner = None         # the message's header fields, from DATA to its end
        self.eightbit = False       # MAIL said BODY=8BITMIME (kept for the next hop)
        self.conn = core.ServerConnection(
            server.hostname, max_message_size=self.opts["max_message_size"],
            max_recipients=self.opts["max_recipients"],
            max_bad_commands=self.opts["max_bad_commands"],
            tls_available=server.tls_ctx is not None and not implicit_tls,
            tls_active=implicit_tls, auth_available=server.users is not None,
            auth_requires_tls=not netaddr.match_any(LOOPBACK, ip), bare_lf=self.opts["bare_lf"],
            data_chunk=compat.IO_CHUNK, state_events=compat.log.threshold <= DEBUG,
            max_junk_commands=self.opts["max_junk_commands"])
        self.stopping = False
        self.dropped = False        # cut at a timeout (_drop): not closed in order
        self.progress = compat.real_monotonic()  # last command or data chunk handled
        self.reading = False        # waiting for the client (may be evicted: server.py)
        self.received = 0           # bytes read from the client
        self.data_t0 = None         # (DATA accepted at, bytes received then): the rate floor
        self.turn = None            # server.refusals when its last MAIL was accepted

    def log(self, text, level="info"):
        compat.log.log(level, LOG, text)

    def stop(self, reply=replies.SHUTTING_DOWN):
        """Ask the session to end (daemon stopping, or evicted to make room)."""
        self.stopping = True
        try:
            self.writer.write(self.conn.shutdown(reply))
        except Exception:  # noqa: BLE001
            pass
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001
            pass

    async def run(self):
        self.log("connect from unknown[%s]" % self.ip)
        try:
            if self.handshake_ctx is not None:      # implicit TLS (CPython 3.11+)
                await self._start_tls(self.handshake_ctx, "CONNECT")
            self.out.append(self.conn.greeting())
            await self._loop()
        except MemoryError as exc:
            self._abort_message()       # frees its buffer before anything else
            self.log("out of memory in session with [%s]: closing (%s)" % (self.ip, exc), "error")
            await self._goodbye(replies.OUT_OF_MEMORY)
        except Exception as exc:  # noqa: BLE001 - one session never takes the daemon down
            if compat.is_tls_error(exc):
                self.log("SSL error from unknown[%s]: %s" % (self.ip, exc))
            elif not (compat.is_connection_error(exc) or self.stopping):
                self.log("session error: %r" % (exc,), "warning")
        finally:
            self._abort_message()
            if not self.dropped:
                await streams.close_stream(self.writer)
            self.log("disconnect from unknown[%s]%s" % (self.ip, self._stats_text()))

    async def _start_tls(self, ctx, state):
        # a handshake within io_timeout (asyncio's own allows 60 s); a silent client
        # may be evicted meanwhile
        self.reading = True
        try:
            self.reader, self.writer = await compat.wait_for(tls.start_tls(
                self.reader, self.writer, ctx, True), self.opts["io_timeout"])
        except Exception as exc:  # noqa: BLE001
            if not compat.is_timeout(exc):
                raise
            raise self._drop(state, "TLS handshake")
        finally:
            self.reading = False

    def _drop(self, state, doing):
        # cut at a timeout, unsent bytes and all: nothing more to wait for; the error
        # that ends the session (a connection error: no "session error" line)
        self.log("timeout after %s from unknown[%s] (%s)" % (state, self.ip, doing))
        streams.abort_stream(self.writer)
        self.dropped = True
        return OSError(compat.ETIMEDOUT, doing + " timed out")

    async def _goodbye(self, reply):
        # a last reply before closing, if there is memory and a client to send it to
        try:
            await self._send(self.conn.shutdown(reply))
        except Exception:  # noqa: BLE001 - MemoryError again, or the client is gone
            pass

    async def _loop(self):
        while True:
            event = self.conn.next_event()
            if event is core.NEED_DATA:
                await self._flush()
                self.conn.receive_data(await self._read())
            elif isinstance(event, core.Close):
                await self._flush()
                return
            elif event is not core.PAUSED:
                await self._handle(event)
                self.progress = compat.real_monotonic()

    async def _read(self):
        # what came (streams.read_now's view: the core copies it before the next await)
        wait, reply = self._read_limit(compat.real_monotonic())
        if wait <= 0:
            return self._cut(reply)
        self.reading = True
        try:
            data = await streams.read_now(self.reader, wait)
        except Exception as exc:  # noqa: BLE001
            if not compat.is_timeout(exc):
                raise
            return self._cut(reply)
        finally:
            self.reading = False
        self.received += len(data)
        return data

    def _read_limit(self, now):
        # (seconds the next read may take, the reply if it does not come): io_timeout
        # per read; a whole command line within command_timeout of the last command
        # handled; in DATA, min_data_rate bytes/s on average after data_rate_grace
        opts = self.opts
        if self.data_t0 is None:
            left, reply = opts["command_timeout"] - (now - self.progress), replies.COMMAND_TIMEOUT
        elif opts["min_data_rate"]:
            allowed = opts["data_rate_grace"] + (self.received - self.data_t0[1]) / opts["min_data_rate"]
            left, reply = self.data_t0[0] + allowed - now, replies.DATA_TOO_SLOW
        else:
            left = reply = None
        if left is None or left >= opts["io_timeout"]:
            return opts["io_timeout"], replies.IDLE_TIMEOUT
        return left, reply

    def _cut(self, reply):
        text = replies.parts(reply)[2]
        what = "timeout" if reply is replies.IDLE_TIMEOUT else text.split(",")[0].lower()
        self.log("%s after %s from unknown[%s]" % (what, self.conn.state, self.ip))
        self.out.append(self.conn.shutdown(reply))
        return b""

    async def _flush(self):
        if self.out:
            data = b"".join(self.out)
            self.out = []
            await self._send(data)

    async def _send(self, data):
        # within io_timeout: a client that reads nothing must not hold its session
        # (and a connection slot) for ever
        try:
            await streams.write_within(self.writer, data, self.opts["io_timeout"])
        except Exception as exc:  # noqa: BLE001
            if not compat.is_timeout(exc):
                raise
            conn = self.conn        # writing the goodbye: the state it closed from
            state = conn.closed_from if conn.state == core.CLOSED else conn.state
            raise self._drop(state, "writing")

    def _count(self, name):
        self.stats[name] = self.stats.get(name, 0) + 1

    def _stats_text(self):
        order = ("ehlo", "helo", "starttls", "auth", "mail", "rcpt", "data", "rset", "quit")
        parts = ["%s=%d" % (k, self.stats[k]) for k in order if k in self.stats]
        return (" " + " ".join(parts)) if parts else ""

    async def _handle(self, event):
        handler = HANDLERS.get(type(event))
        if handler is not None:
            await handler(self, event)

    # --- transaction --------------------------------------------------------
    async def on_reply(self, event):
        self.out.append(event.data)

    async def on_helo(self, event):
        self._count("ehlo" if event.esmtp else "helo")
        self._reset()

    async def on_rset(self, event):
        self._count("rset")
        self._reset()

    async def on_state_change(self, event):
        text = "state %s -> %s (%s)" % (event.old, event.new, event.cause)
        self.log("%s from unknown[%s]" % (text, self.ip), "debug")

    async def on_quit(self, event):
        self._count("quit")

    async def on_mail(self, event):
        self._count("mail")
        if self._memory_low("MAIL", event.mailbox.address):
            return
        refusal = self._mail_refusal(event)
        if refusal is not None:
            self._noqueue("MAIL", refusal, event.mailbox.address, None)
            self.out.append(self.conn.reject_mail(refusal))
            return
        self.sender = event.mailbox.address
        self.turn = self.server.refusals
        self.rcpts = []
        self.eightbit = event.body == "8BITMIME"
        self.out.append(self.conn.accept_mail())

    def _memory_low(self, stage, sender):
        # too little heap for a new message (MicroPython): 421 and close, so that this
        # session's own memory returns too; a 452 kept every refused session open, and
        # sessions that together held the margin refused each other for ever. A session
        # that has had a turn gives the next one to a client refused since: else the
        # sessions let in keep the heap, and a refused client could wait for ever
        if stage == "MAIL" and self.turn is not None and self.server.refused_since(self.turn):
            self._close_low_memory(stage, sender, "a refused client's turn")
            return True
        if not heap.memory_low(tls.tls_memory.headroom()):
            return False
        self.server.refused_for_memory()
        self._close_low_memory(stage, sender, "%d bytes free" % heap.heap_free())
        return True

    def _close_low_memory(self, stage, sender, why):
        self.log("low memory (%s): closing the session of [%s]" % (why, self.ip), "warning")
        self._noqueue(stage, replies.LOW_MEMORY, sender, None)
        self.out.append(self.conn.shutdown(replies.LOW_MEMORY))

    def _mail_refusal(self, event):
        reason = self.server.spool.check_accept(event.size or 0)
        if reason == TOO_BIG:
            return replies.QUEUE_TOO_SMALL      # never fits, not even in an empty queue
        if reason:
            self.log("queue refuses mail: %s" % reason, "warning")
            return replies.QUEUE_FULL
        if self.server.rate.over(self.client):      # counted at the final dot (accepted only)
            return replies.RATE_LIMITED % self.ip
        return None

    async def on_rcpt(self, event):
        self._count("rcpt")
        mailbox = event.mailbox
        refusal = self.server.policy.rcpt_verdict(mailbox, self.ip, self.conn.authenticated)
        if refusal is not None:
            self._noqueue("RCPT", refusal, self.sender, mailbox.address)
            self.out.append(self.conn.reject_rcpt(refusal))
            return
        self.rcpts.append(mailbox.address)
        self.out.append(self.conn.accept_rcpt())

    def _noqueue(self, stage, reply, sender, rcpt):
        to = " to=<%s>" % rcpt if rcpt is not None else ""
        self.log("NOQUEUE: reject: %s from unknown[%s]: %s; from=<%s>%s proto=%s helo=<%s>"
                 % (stage, self.ip, reply, sender or "", to,
                    self.conn.received_protocol(), self.conn.helo_name or ""))

    async def on_data_start(self, event):
        self._count("data")
        if self._memory_low("DATA", self.sender):
            return
        try:
            self.msg = self.server.spool.new_message()
        except (SpoolFull, OSError, MemoryError) as exc:
            self.log("cannot open queue file: %s" % exc, "warning")
            self.out.append(self.conn.reject_data(replies.QUEUE_FULL))
            return
        try:
            self.conn.make_room_for_data()      # the DATA buffer, before the 354
        except MemoryError:                     # free heap, but no run of its size
            self._abort_message()
            self._close_low_memory("DATA", self.sender, "no room for a DATA buffer")
            return
        self.failed = None
        self.total = 0              # bytes of the message as received (all of it)
        self.scanner = headers.HeaderScanner()
        self.headers_done = False
        self.log("%s: client=unknown[%s]" % (self.msg.queue_id, self.ip))
        self._write(self._received())
        self.data_t0 = (compat.real_monotonic(), self.received)
        self.out.append(self.conn.accept_data())

    def _received(self):
        rcpt = self.rcpts[0] if len(self.rcpts) == 1 else None
        return headers.received_field(self.server.hostname, self.conn.helo_name, None, self.ip,
                                      self.msg.queue_id, self.conn.received_protocol(), rcpt)

    def _write(self, data):
        if not data:
            return
        self.total += len(data)
        if self.failed is not None:
            return
        try:
            self.msg.write(data)
        except (SpoolFull, OSError) as exc:
            self.failed = exc
            self.log("%s: queue write failed: %s" % (self.msg.queue_id, exc), "warning")

    async def on_data_chunk(self, event):
        if self.msg is None:
            return
        data = self.scanner.feed(event.data)
        if data is not None:
            self._write_body(data)

    def _write_body(self, data):
        if not self.headers_done:
            self.headers_done = True
            if self._adds_headers():
                self._write(headers.missing_fields(self.scanner.present, self.server.hostname,
                                                   self.msg.queue_id))
        self._write(data)

    def _adds_headers(self):
        return self.opts["add_missing_headers"] and self.server.trusted(
            self.ip, self.conn.authenticated)

    async def on_data_end(self, event):
        # the core's transaction ended with it: so does the session's (an idle
        # session holds no envelope and no header scanner)
        self.data_t0 = None
        if self.msg is not None and event.ok:
            self._write_body(self.scanner.finish())
            self.out.append(await self._commit())
        self._reset()

    async def _commit(self):
        msg, self.msg = self.msg, None
        if self.failed is not None:
            msg.abort()
            return self.conn.reject_message(self._failure_reply(self.failed))
        info = {"client": self.ip, "helo": self.conn.helo_name or "",
                "proto": self.conn.received_protocol()}
        if self.eightbit:
            info["eightbit"] = True     # qmgr: BODY=8BITMIME on, or 5.6.3 (RFC 6152)
        try:
            queue_id = await self.server.spool.commit(msg, self.sender, self.rcpts, info)
        except (SpoolFull, OSError) as exc:
            self.log("%s: commit failed: %s" % (msg.queue_id, exc), "warning")
            return self.conn.reject_message(self._failure_reply(exc))
        self.server.rate.count(self.client)
        self._queued(queue_id)
        return self.conn.accept_message("OK: queued as %s" % queue_id)

    def _failure_reply(self, exc):
        # the whole message (not the part written when the queue refused more)
        # decides whether it could ever fit: 552 if not, else 452/451
        too_big = isinstance(exc, SpoolFull) and exc.reason == TOO_BIG
        if too_big or self.server.spool.never_fits(self.total):
            return replies.QUEUE_TOO_SMALL
        if isinstance(exc, SpoolFull) or compat.is_no_space(exc):
            return replies.QUEUE_FULL
        return replies.TEMP_FAILURE

    def _queued(self, queue_id):
        if self.scanner.message_id:
            self.log("%s: message-id=%s" % (queue_id, self.scanner.message_id))
        if self.server.qmgr is not None:
            self.server.qmgr.wake(queue_id)

    def _abort_message(self):
        self.scanner = None
        if self.msg is not None:
            self.msg.abort()
            self.msg = None

    def _reset(self):
        self._abort_message()
        self.sender = None
        self.rcpts = None

    # --- STARTTLS and AUTH ----------------------------------------------------
    async def on_starttls(self, event):
        self._count("starttls")
        tls.discard_plaintext(self.reader, self.writer)    # sent before our 220: never over TLS
        await self._flush()
        try:
            await self._start_tls(self.server.tls_ctx, "STARTTLS")
        except compat.TLS_ERRORS as exc:
            if self.dropped:
                raise
            self.log("STARTTLS handshake failed with unknown[%s]: %s" % (self.ip, exc))
            self.conn.shutdown(replies.TEMP_FAILURE)
            return
        self.conn.tls_started()

    async def on_auth(self, event):
        self._count("auth")
        lockout = self.server.lockout
        if lockout is None:     # a reload took the AUTH users away after EHLO offered it
            self.out.append(self.conn.reject_auth(replies.AUTH_NOT_AVAILABLE))
            return
        if lockout.locked(self.client):
            self.out.append(self.conn.reject_auth(replies.AUTH_LOCKED))
            return
        if await self.server.check_password(event.user, event.password):
            lockout.succeeded(self.client)
            self.log("unknown[%s]: sasl_method=%s, sasl_username=%s"
                     % (self.ip, event.mechanism, event.user))
            self.out.append(self.conn.accept_auth())
            return
        failures = lockout.failed(self.client)
        self.log("unknown[%s]: SASL %s authentication failed (%d)"
                 % (self.ip, event.mechanism, failures), "warning")
        await self._flush()
        await compat.sleep(_AUTH_FAILURE_DELAY_S)
        self.out.append(self.conn.reject_auth())


HANDLERS = {
    core.Reply: Session.on_reply,
    core.Helo: Session.on_helo,
    core.Rset: Session.on_rset,
    core.Quit: Session.on_quit,
    core.MailFrom: Session.on_mail,
    core.RcptTo: Session.on_rcpt,
    core.DataStart: Session.on_data_start,
    core.DataChunk: Session.on_data_chunk,
    core.DataEnd: Session.on_data_end,
    core.StartTLS: Session.on_starttls,
    core.AuthRequest: Session.on_auth,
    core.StateChange: Session.on_state_change,
}

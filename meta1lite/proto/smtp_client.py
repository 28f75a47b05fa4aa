# Sans-I/O SMTP client core: one connection's worth of SMTP transactions to one
# destination (RFC 5321, with PIPELINING RFC 2920, SIZE RFC 1870, 8BITMIME RFC 6152,
# STARTTLS RFC 3207, AUTH PLAIN/LOGIN RFC 4954, enhanced codes RFC 3463/2034,
# SMTPUTF8 RFC 6531).
#
# Owns: the connection (ClientConnection): the replies owed, oldest first, the
# event queue, the bytes of the commands the caller asks for, dot-stuffing of the
# body, and the RFC 5321 section 4.5.3.2 timeout for the phase it is waiting in.
# The states, their transition table and what each reply does are in
# client_states (with Capabilities); reading replies in replies; the events in
# events; this module re-exports what the I/O layer uses. ONE method,
# _set_state (events.StateMachine), changes the state: it checks the move against
# client_states.TRANSITIONS and, with state_events, records a StateChange event.
# Must never: touch sockets, files, clocks or the spool; raise on anything the
# server sends (bad input becomes a ProtocolError event); put a password in an
# event's repr/str or in its own repr; send MAIL in clear when TLS is required.
#
# Use (the I/O layer, h11 style):
#     conn = ClientConnection("relay.example", tls="opportunistic")
#     loop: ev = conn.next_event()
#       NEED_DATA       -> conn.receive_data(await read(timeout=conn.timeout()))
#                          (b"" on EOF or on a broken connection)
#       Send            -> write ev.data
#       NeedTLS         -> handshake, then write conn.tls_started()
#       Ready           -> write conn.start_transaction(...) or write conn.quit()
#       ReadyForBody    -> write conn.encode_body_chunk(chunk)... then conn.end_body()
#       TransactionResult, Greeting, Capabilities, Authenticated -> record / log
#       StateChange     -> log (only with state_events=True; off by default)
#       ConnectionFailed, ProtocolError -> record; keep going until Closed
#       Closed          -> close the socket
from meta1lite.const import const
from meta1lite.proto import client_states as states
from meta1lite.proto.client_states import (  # noqa: F401 - vocabulary re-exported
    LOCAL_CODE,
    S_BODY,
    S_CLOSED,
    S_DOT,
    S_EHLO,
    S_GREETING,
    S_MAIL,
    S_QUIT,
    S_READY,
    S_TLS,
    TLS_OFF,
    TLS_OPPORTUNISTIC,
    TLS_REQUIRED,
    Capabilities,
)
from meta1lite.proto.events import (  # noqa: F401 - re-exported: the core's API
    NEED_DATA,
    Authenticated,
    Closed,
    ConnectionFailed,
    Event,
    Greeting,
    NeedTLS,
    ProtocolError,
    Ready,
    ReadyForBody,
    Send,
    StateChange,
    StateMachine,
    TransactionResult,
)
from meta1lite.proto.replies import (  # noqa: F401 - re-exported: the core's API
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    ReplyReader,
    parse_reply_line,
    split_enhanced,
)
from meta1lite.status import BOUNCED, DEFERRED, SENT  # noqa: F401 - re-exported for callers

_DOT, _LF = 46, 10             # "." and LF, as indexing bytes returns them

MAX_PIPELINE_RCPTS = const(32)  # RCPTs per pipelined write, so replies never fill a small window

# --- RFC 5321 section 4.5.3.2 timeouts, seconds, by phase -------------------------
TIMEOUT_GREETING = const(300)  # initial 220
TIMEOUT_MAIL = const(300)      # MAIL reply
TIMEOUT_RCPT = const(300)      # RCPT reply
TIMEOUT_DATA_INIT = const(120)  # 354 to DATA
TIMEOUT_DATA_BLOCK = const(180)  # each write of body data
TIMEOUT_DATA_TERM = const(600)  # reply to the final dot
TIMEOUT_COMMAND = const(300)   # EHLO, STARTTLS, AUTH, RSET, QUIT (no RFC figure; 5 min)

PHASE_GREETING = const("greeting")
PHASE_MAIL = const("mail")
PHASE_RCPT = const("rcpt")
PHASE_DATA_INIT = const("data")
PHASE_DATA_BLOCK = const("block")
PHASE_DATA_TERM = const("dot")
PHASE_COMMAND = const("command")

TIMEOUTS = {
    PHASE_GREETING: TIMEOUT_GREETING, PHASE_MAIL: TIMEOUT_MAIL, PHASE_RCPT: TIMEOUT_RCPT,
    PHASE_DATA_INIT: TIMEOUT_DATA_INIT, PHASE_DATA_BLOCK: TIMEOUT_DATA_BLOCK,
    PHASE_DATA_TERM: TIMEOUT_DATA_TERM, PHASE_COMMAND: TIMEOUT_COMMAND,
}

_PHASE_OF_COMMAND = {
    "connect": PHASE_GREETING, "mail": PHASE_MAIL, "rcpt": PHASE_RCPT,
    "data": PHASE_DATA_INIT, "dot": PHASE_DATA_TERM, "discard": PHASE_DATA_TERM,
}


class ClientStateError(Exception):
    """The caller used the client in a state that does not allow it (a bug)."""


class Credentials:
    """A user name and password for AUTH; the password never shows in repr/str."""

    def __init__(self, user, password):
        self.user = user
        self._password = password

    def __repr__(self):
        return "Credentials(%r, password=<redacted>)" % self.user


class ClientConnection(StateMachine):
    """Sans-I/O SMTP client for one connection.

    helo_name: our name for EHLO/HELO. tls: 'opportunistic' | 'required' | 'off'.
    tls_active: True when the I/O layer wrapped the socket before the greeting
    (implicit TLS, port 465). credentials: Credentials (or (user, password)) for AUTH.
    auth_without_tls: allow AUTH on a clear connection. state_events: queue a
    StateChange event at every change of state.
    """
    TRANSITIONS = states.TRANSITIONS
    STATE_ERROR = ClientStateError

    def __init__(self, helo_name, tls=TLS_OPPORTUNISTIC, tls_active=False,
                 credentials=None, auth_without_tls=False, state_events=False):
        if tls not in states.TLS_MODES:
            raise ValueError("tls must be one of %s" % ", ".join(states.TLS_MODES))
        if not helo_name or " " in helo_name or states.bad_path(helo_name):
            raise ValueError("bad helo name %r" % helo_name)
        if isinstance(credentials, tuple):
            credentials = Credentials(credentials[0], credentials[1])
        StateMachine.__init__(self, S_GREETING, state_events)
        self.helo_name = helo_name
        self.tls_mode = tls
        self.tls_active = tls_active
        self.capabilities = None
        self.authenticated = False
        self._credentials = credentials
        self._auth_without_tls = auth_without_tls
        self._pending = [("connect", None)]     # replies owed, oldest first
        self._replies = ReplyReader()
        self._eof = False
        self._starttls_tried = False
        self._auth_step = 0
        self._auth_mech = None
        self._tx = None
        self._need_rset = False
        self._pending_mail = None
        self._at_line_start = True

    def __repr__(self):
        return "<ClientConnection state=%s tls=%s>" % (self.state, self.tls_active)

    # --- input ---
    def receive_data(self, data):
        """Feed bytes read from the server; b'' means the connection ended."""
        if not data:
            self._eof = True
        elif self.state != S_TLS:                # plaintext before the handshake: discard
            self._replies.feed(data)

    def next_event(self):
        """Return the next event, or NEED_DATA when more bytes must be read first."""
        while not self._events:
            if self.state == S_CLOSED:
                return Closed()
            if not self._step():
                return NEED_DATA
        return self._events.pop(0)

    def _step(self):
        if self.state not in (S_TLS, S_BODY):
            reply = self._replies.next_reply()
            if self._replies.error is not None:
                self._protocol_error(self._replies.error)
                return True
            if reply is not None:
                self._dispatch(reply)
                return True
        if self._eof:
            self._on_eof()
            return True
        return False

    def _dispatch(self, reply):
        if not self._pending:
            if reply.code == 421:
                return self._server_closing(reply)
            return self._protocol_error("unexpected reply %d %s" % (reply.code, reply.text))
        kind, arg = self._pending.pop(0)
        if kind not in states.EXPECTED[self.state]:
            raise ClientStateError("reply to %s in state %s" % (kind, self.state))
        if reply.code == 421 and kind != "quit":
            return self._server_closing(reply)
        states.HANDLERS[kind](self, reply, arg)

    # --- output helpers ---
    def _send(self, kind, line, arg=None, sensitive=False):
        self._pending.append((kind, arg))
        self._emit(Send(line, sensitive))

    def _discard_input(self):
        self._replies.discard()

    def ehlo_command(self):
        """The bytes of our EHLO."""
        return b"EHLO " + self.helo_name.encode() + b"\r\n"

    def tls_started(self):
        """Call after the TLS handshake that NeedTLS asked for; returns the new EHLO."""
        self._require(S_TLS, "tls_started")
        self._discard_input()
        self.tls_active = True
        self.capabilities = None
        self._set_state(S_EHLO, "tls_started")
        self._pending.append(("ehlo", None))
        return self.ehlo_command()

    def _ready(self, cause):
        self._set_state(S_READY, cause)
        self._emit(Ready())

    # --- transactions ---
    def start_transaction(self, message_token, sender, recipients, size=None, eightbit=False):
        """Begin one message (state 'ready'); returns the bytes to send (maybe b'').

        size: the message's size in octets (for SIZE=); eightbit: the body has
        8-bit octets (needs 8BITMIME). Results come as one TransactionResult."""
        self._require(S_READY, "start_transaction")
        if not recipients:
            raise ValueError("a transaction needs at least one recipient")
        caps = self.capabilities
        tx = states.Transaction(message_token, list(recipients), caps.pipelining)
        refusal = states.message_refusal(caps, sender, size, eightbit)
        if refusal is not None:
            tx.settle_open(LOCAL_CODE, refusal[0], refusal[1], BOUNCED)
            return self._end_transaction(tx)
        tx.screen(caps)
        if not tx.to_send:
            return self._end_transaction(tx)
        self._tx = tx
        self._set_state(S_MAIL, "mail")
        return self._open_transaction(tx, tx.mail_command(caps, sender, size, eightbit))

    def _open_transaction(self, tx, mail):
        out = b""
        if self._need_rset:
            self._need_rset = False
            self._pending.append(("rset", None))
            out = b"RSET\r\n"
            if not tx.pipelined:
                self._pending_mail = mail
                return out
        return out + self._queue_mail(tx, mail)

    def _queue_mail(self, tx, mail):
        self._pending.append(("mail", None))
        if not tx.pipelined:
            return mail
        return mail + self._rcpt_batch(tx)

    def _rcpt_batch(self, tx):
        """RCPTs to send next: one (lock-step) or a bounded batch, then DATA (pipelined)."""
        limit = MAX_PIPELINE_RCPTS if tx.pipelined else 1
        out = []
        while tx.next_rcpt < len(tx.to_send) and len(out) < limit:
            index = tx.to_send[tx.next_rcpt]
            tx.next_rcpt += 1
            self._pending.append(("rcpt", index))
            out.append(tx.rcpt_command(index))
        if tx.pipelined and tx.next_rcpt == len(tx.to_send):
            self._pending.append(("data", None))
            out.append(b"DATA\r\n")
        return b"".join(out)

    def encode_body_chunk(self, data):
        """Dot-stuff one chunk of the (CRLF, unstuffed) body; returns the bytes to send.
        data: bytes, bytearray or a memoryview (sent as it is when nothing needs stuffing)."""
        self._require(S_BODY, "encode_body_chunk")
        if not data:
            return b""
        lead = self._at_line_start and data[0] == _DOT
        self._at_line_start = data[-1] == _LF
        if not lead and not _has_dot_line(data):
            return data             # the usual chunk: sent as it is, no copy
        stuffed = bytes(data).replace(b"\n.", b"\n..")
        return b"." + stuffed if lead else stuffed

    def end_body(self):
        """End the body; returns the terminator (with a CRLF first if the body lacked one)."""
        self._require(S_BODY, "end_body")
        self._set_state(S_DOT, "end_body")
        self._pending.append(("dot", None))
        return b".\r\n" if self._at_line_start else b"\r\n.\r\n"

    def _end_transaction(self, tx):
        tx.settle_open(LOCAL_CODE, "4.4.0", "no reply for this recipient")
        self._tx = None
        self._emit(TransactionResult(tx.token, tx.results))
        self._ready("transaction")
        return b""

    # --- the end ---
    def quit(self):
        """Say goodbye (state 'ready'); returns the bytes to send (b'' if already ending)."""
        if self.state in (S_QUIT, S_CLOSED):
            return b""
        self._require(S_READY, "quit")
        self._set_state(S_QUIT, "quit")
        self._pending.append(("quit", None))
        return b"QUIT\r\n"

    def _close(self):
        self._pending = []
        self._set_state(S_CLOSED, "close")
        self._emit(Closed())

    def _abort_transaction(self, code, enhanced, text):
        tx = self._tx
        if tx is None:
            return
        self._tx = None
        tx.settle_open(code, enhanced, text, DEFERRED)   # accepted ones too: no dot reply
        self._emit(TransactionResult(tx.token, tx.results))

    def _fail_reply(self, reply, permanent):
        self._fail(reply.code, reply.enhanced, reply.text, permanent)

    def _fail_local(self, enhanced, text):
        self._fail(LOCAL_CODE, enhanced, text, False)

    def _fail(self, code, enhanced, text, permanent):
        self._abort_transaction(code, enhanced, text)
        self._emit(ConnectionFailed(code, enhanced, text, permanent))
        self._set_state(S_QUIT, "failed")
        self._send("quit", b"QUIT\r\n")

    def _server_closing(self, reply):
        self._abort_transaction(reply.code, reply.enhanced, reply.text)
        self._emit(ConnectionFailed(reply.code, reply.enhanced, reply.text, False))
        self._close()

    def _on_eof(self):
        if self.state == S_QUIT:
            return self._close()
        text = "connection closed by the server"
        self._abort_transaction(LOCAL_CODE, "4.4.2", text)
        self._emit(ConnectionFailed(LOCAL_CODE, "4.4.2", text, False))
        self._close()

    def _protocol_error(self, text):
        self._discard_input()
        self._abort_transaction(LOCAL_CODE, "4.5.0", "protocol error: " + text)
        self._emit(ProtocolError(text))
        self._close()

    # --- timeouts ---
    def waiting_for(self):
        """The phase the client waits in (PHASE_*), or None when it is the caller's turn."""
        if self.state == S_BODY:
            return PHASE_DATA_BLOCK
        if not self._pending or self.state == S_TLS:
            return None
        return _PHASE_OF_COMMAND.get(self._pending[0][0], PHASE_COMMAND)

    def timeout(self):
        """Seconds the I/O layer should wait in the current phase (None: no reply owed)."""
        phase = self.waiting_for()
        return TIMEOUTS[phase] if phase else None

    def _require(self, state, what):
        if self.state != state:
            raise ClientStateError("%s() in state %s" % (what, self.state))


def _has_dot_line(data):
    # b"\n." in data; a memoryview (a board's short last chunk, read into a reused
    # buffer) has no find(): scanned, at most one chunk a message
    if not isinstance(data, memoryview):
        return data.find(b"\n.") >= 0
    last = len(data) - 1
    i = 0
    while i < last:
        if data[i] == _LF and data[i + 1] == _DOT:
            return True
        i += 1
    return False

# Sans-I/O SMTP client core: one connection's worth of SMTP transactions to one
# destination (RFC 5321, with PIPELINING RFC 2920, SIZE RFC 1870, 8BITMIME RFC 6152,
# STARTTLS RFC 3207, AUTH PLAIN/LOGIN RFC 4954, enhanced codes RFC 3463/2034,
# SMTPUTF8 RFC 6531).
#
# Owns: parsing server replies (bounded), the client's state machine, the bytes of
# every command, dot-stuffing of the body, per-recipient result classes, and the
# RFC 5321 section 4.5.3.2 timeout for the phase it is waiting in.
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
#       ConnectionFailed, ProtocolError -> record; keep going until Closed
#       Closed          -> close the socket
import binascii

# --- limits -------------------------------------------------------------------
MAX_REPLY_LINE = 1024          # octets per reply line (RFC 5321 says 512; be lenient)
MAX_REPLY_LINES = 64           # lines per multi-line reply (EHLO lists ~15)
MAX_ADDRESS_LENGTH = 256       # octets of a path (RFC 5321 section 4.5.3.1.3)
MAX_PIPELINE_RCPTS = 32        # RCPTs per pipelined write, so replies never fill a small window

# --- RFC 5321 section 4.5.3.2 timeouts, seconds, by phase -------------------------
TIMEOUT_GREETING = 300         # initial 220
TIMEOUT_MAIL = 300             # MAIL reply
TIMEOUT_RCPT = 300             # RCPT reply
TIMEOUT_DATA_INIT = 120        # 354 to DATA
TIMEOUT_DATA_BLOCK = 180       # each write of body data
TIMEOUT_DATA_TERM = 600        # reply to the final dot
TIMEOUT_COMMAND = 300          # EHLO, STARTTLS, AUTH, RSET, QUIT (no RFC figure; 5 min)

PHASE_GREETING = "greeting"
PHASE_MAIL = "mail"
PHASE_RCPT = "rcpt"
PHASE_DATA_INIT = "data"
PHASE_DATA_BLOCK = "block"
PHASE_DATA_TERM = "dot"
PHASE_COMMAND = "command"

TIMEOUTS = {
    PHASE_GREETING: TIMEOUT_GREETING, PHASE_MAIL: TIMEOUT_MAIL, PHASE_RCPT: TIMEOUT_RCPT,
    PHASE_DATA_INIT: TIMEOUT_DATA_INIT, PHASE_DATA_BLOCK: TIMEOUT_DATA_BLOCK,
    PHASE_DATA_TERM: TIMEOUT_DATA_TERM, PHASE_COMMAND: TIMEOUT_COMMAND,
}

# --- policy and result vocabulary -----------------------------------------------------
TLS_OPPORTUNISTIC = "opportunistic"
TLS_REQUIRED = "required"
TLS_OFF = "off"
TLS_MODES = (TLS_OPPORTUNISTIC, TLS_REQUIRED, TLS_OFF)

SENT = "sent"
DEFERRED = "deferred"
BOUNCED = "bounced"

LOCAL_CODE = 0                 # the code of a result this client decided, not the server

# --- states ----------------------------------------------------------------------------
S_GREETING = "greeting"        # connected, waiting for the 220
S_EHLO = "ehlo"                # EHLO sent
S_HELO = "helo"                # EHLO refused with 500/502, HELO sent
S_STARTTLS = "starttls"        # STARTTLS sent
S_TLS = "tls"                  # 220 to STARTTLS seen; the I/O layer does the handshake
S_AUTH = "auth"                # AUTH exchange under way
S_READY = "ready"              # nothing outstanding: the caller starts a message or quits
S_MAIL = "mail"                # RSET/MAIL/RCPT/DATA outstanding (one, or a pipelined batch)
S_BODY = "body"                # 354 seen; the caller streams the body
S_DOT = "dot"                  # final dot sent
S_QUIT = "quit"                # QUIT sent
S_CLOSED = "closed"

# state -> (commands whose replies may be outstanding, states it may go to)
# replies:  connect 220 | ehlo 250 (500/502 -> HELO) | helo 250 | starttls 220 |
#           auth 235 (334 = next step) | rset 250 | mail 250 | rcpt 250/251 |
#           data 354 | dot 250 | quit 221.   421 anywhere: the server is closing.
_STATES = {
    S_GREETING: (("connect",), (S_EHLO, S_QUIT, S_CLOSED)),
    S_EHLO: (("ehlo",), (S_HELO, S_STARTTLS, S_AUTH, S_READY, S_QUIT, S_CLOSED)),
    S_HELO: (("helo",), (S_AUTH, S_READY, S_QUIT, S_CLOSED)),
    S_STARTTLS: (("starttls",), (S_TLS, S_AUTH, S_READY, S_QUIT, S_CLOSED)),
    S_TLS: ((), (S_EHLO, S_CLOSED)),
    S_AUTH: (("auth",), (S_READY, S_QUIT, S_CLOSED)),
    S_READY: ((), (S_MAIL, S_QUIT, S_CLOSED)),
    S_MAIL: (("rset", "mail", "rcpt", "data"), (S_BODY, S_DOT, S_READY, S_CLOSED)),
    S_BODY: ((), (S_DOT, S_CLOSED)),
    S_DOT: (("dot", "discard"), (S_READY, S_CLOSED)),
    S_QUIT: (("quit",), (S_CLOSED,)),
    S_CLOSED: ((), ()),
}

_PHASE_OF_COMMAND = {
    "connect": PHASE_GREETING, "mail": PHASE_MAIL, "rcpt": PHASE_RCPT,
    "data": PHASE_DATA_INIT, "dot": PHASE_DATA_TERM, "discard": PHASE_DATA_TERM,
}


class ClientStateError(Exception):
    """The caller used the client in a state that does not allow it (a bug)."""


# --- events ------------------------------------------------------------------------------
class Event:
    _fields = ()

    def __repr__(self):
        parts = ["%s=%r" % (name, getattr(self, name)) for name in self._fields]
        return "%s(%s)" % (type(self).__name__, ", ".join(parts))


class NeedData(Event):
    pass


NEED_DATA = NeedData()


class Send(Event):
    """Bytes the client wants written now (commands it issues on its own)."""

    def __init__(self, data, sensitive=False):
        self.data = data
        self.sensitive = sensitive

    def __repr__(self):
        if self.sensitive:
            return "Send(<%d bytes of credentials, redacted>)" % len(self.data)
        return "Send(%r)" % self.data


class Greeting(Event):
    _fields = ("code", "enhanced", "text")

    def __init__(self, code, enhanced, text):
        self.code = code
        self.enhanced = enhanced
        self.text = text


class Capabilities(Event):
    _fields = ("esmtp", "text", "pipelining", "size", "eightbitmime", "starttls",
               "auth", "enhanced", "smtputf8", "tls_active")

    def __init__(self, esmtp, text, keywords, tls_active):
        self.esmtp = esmtp
        self.text = text
        self.keywords = keywords                 # KEYWORD -> parameter string
        self.tls_active = tls_active
        self.pipelining = "PIPELINING" in keywords
        self.size = _size_limit(keywords.get("SIZE"))
        self.eightbitmime = "8BITMIME" in keywords
        self.starttls = "STARTTLS" in keywords
        self.auth = tuple(keywords.get("AUTH", "").upper().split())
        self.enhanced = "ENHANCEDSTATUSCODES" in keywords
        self.smtputf8 = "SMTPUTF8" in keywords


class NeedTLS(Event):
    pass


class Authenticated(Event):
    _fields = ("mechanism",)

    def __init__(self, mechanism):
        self.mechanism = mechanism


class Ready(Event):
    pass


class ReadyForBody(Event):
    _fields = ("message_token",)

    def __init__(self, message_token):
        self.message_token = message_token


class TransactionResult(Event):
    """results: list of (rcpt, code, enhanced, text, 'sent'|'deferred'|'bounced')."""
    _fields = ("message_token", "results")

    def __init__(self, message_token, results):
        self.message_token = message_token
        self.results = results


class ConnectionFailed(Event):
    _fields = ("code", "enhanced", "text", "permanent")

    def __init__(self, code, enhanced, text, permanent):
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.permanent = permanent


class ProtocolError(Event):
    _fields = ("text",)

    def __init__(self, text):
        self.text = text


class Closed(Event):
    pass


class Credentials:
    """A user name and password for AUTH; the password never shows in repr/str."""

    def __init__(self, user, password):
        self.user = user
        self._password = password

    def __repr__(self):
        return "Credentials(%r, password=<redacted>)" % self.user


# --- reply parsing ---------------------------------------------------------------------------
class Reply:
    def __init__(self, code, enhanced, lines):
        self.code = code
        self.enhanced = enhanced
        self.lines = lines

    @property
    def text(self):
        return " ".join(self.lines)

    def __repr__(self):
        return "Reply(%d, %r, %r)" % (self.code, self.enhanced, self.lines)


def _text(raw):
    try:
        return raw.decode()
    except UnicodeError:
        return "".join(chr(b) if b < 128 else "?" for b in raw)


def _size_limit(param):
    if param is None:
        return None
    word = param.split(" ")[0] if param else ""
    return int(word) if word.isdigit() else 0


def split_enhanced(code, text):
    """Split 'X.Y.Z rest' into ('X.Y.Z', 'rest') when X is code's class, else (None, text)."""
    word, _, rest = text.partition(" ")
    parts = word.split(".")
    if len(parts) != 3 or parts[0] != str(code // 100):
        return None, text
    for part in parts[1:]:
        if not (part.isdigit() and len(part) <= 3):
            return None, text
    return word, rest


def parse_reply_line(raw):
    """Parse one reply line (no line end) into (code, is_last, text) or None if garbage."""
    if len(raw) < 3 or (len(raw) > 3 and raw[3:4] not in (b" ", b"-")):
        return None
    head = raw[:3]
    if not (head[0:1] in b"2345" and head[1:2] in b"012345" and head[2:3] in b"0123456789"):
        return None
    return int(head), raw[3:4] != b"-", _text(raw[4:])


def _classify(code):
    if code // 100 == 2:
        return SENT
    if code // 100 == 5:
        return BOUNCED
    return DEFERRED


def _is_ascii(text):
    for ch in text:
        if ord(ch) > 127:
            return False
    return True


def _bad_path(address):
    if len(address.encode()) > MAX_ADDRESS_LENGTH:
        return True
    for ch in "\r\n\0<>":
        if ch in address:
            return True
    return False


def _b64(data):
    return binascii.b2a_base64(data)[:-1]


# --- transactions ---------------------------------------------------------------------------
class _Transaction:
    def __init__(self, token, rcpts, pipelined):
        self.token = token
        self.rcpts = rcpts
        self.pipelined = pipelined
        self.results = [None] * len(rcpts)   # None: open; tuple: final
        self.to_send = []                    # indexes of recipients given to the server
        self.accepted = []                   # indexes the server accepted at RCPT
        self.next_rcpt = 0                   # lock-step: position in to_send
        self.mail_ok = False

    def settle(self, index, code, enhanced, text, klass=None):
        self.results[index] = (self.rcpts[index], code, enhanced, text,
                               klass or _classify(code))

    def settle_open(self, code, enhanced, text, klass=None):
        for i in range(len(self.rcpts)):
            if self.results[i] is None:
                self.settle(i, code, enhanced, text, klass)


# --- the client ------------------------------------------------------------------------------
class ClientConnection:
    """Sans-I/O SMTP client for one connection.

    helo_name: our name for EHLO/HELO. tls: 'opportunistic' | 'required' | 'off'.
    tls_active: True when the I/O layer wrapped the socket before the greeting
    (implicit TLS, port 465). credentials: Credentials (or (user, password)) for AUTH.
    auth_without_tls: allow AUTH on a clear connection.
    """

    def __init__(self, helo_name, tls=TLS_OPPORTUNISTIC, tls_active=False,
                 credentials=None, auth_without_tls=False):
        if tls not in TLS_MODES:
            raise ValueError("tls must be one of %s" % ", ".join(TLS_MODES))
        if not helo_name or " " in helo_name or _bad_path(helo_name):
            raise ValueError("bad helo name %r" % helo_name)
        if isinstance(credentials, tuple):
            credentials = Credentials(credentials[0], credentials[1])
        self.helo_name = helo_name
        self.tls_mode = tls
        self.tls_active = tls_active
        self.capabilities = None
        self.authenticated = False
        self._credentials = credentials
        self._auth_without_tls = auth_without_tls
        self._state = S_GREETING
        self._pending = [("connect", None)]     # replies owed, oldest first
        self._events = []
        self._rx = b""
        self._rx_pos = 0
        self._lines = []                         # lines of a multi-line reply so far
        self._code = 0
        self._eof = False
        self._starttls_tried = False
        self._auth_step = 0
        self._auth_mech = None
        self._tx = None
        self._need_rset = False
        self._pending_mail = None
        self._at_line_start = True

    def __repr__(self):
        return "<ClientConnection state=%s tls=%s>" % (self._state, self.tls_active)

    @property
    def state(self):
        return self._state

    # --- the one function that changes state ---
    def _goto(self, state):
        if state not in _STATES[self._state][1]:
            raise ClientStateError("%s -> %s" % (self._state, state))
        self._state = state

    # --- input ---
    def receive_data(self, data):
        """Feed bytes read from the server; b'' means the connection ended."""
        if not data:
            self._eof = True
        elif self._state == S_TLS:
            return                               # plaintext before the handshake: discard
        elif self._rx_pos:
            self._rx = self._rx[self._rx_pos:] + bytes(data)
            self._rx_pos = 0
        else:
            self._rx += bytes(data)

    def next_event(self):
        """Return the next event, or NEED_DATA when more bytes must be read first."""
        while not self._events:
            if self._state == S_CLOSED:
                return Closed()
            if not self._step():
                return NEED_DATA
        return self._events.pop(0)

    def _step(self):
        if self._state not in (S_TLS, S_BODY):
            reply = self._read_reply()
            if reply is not None:
                self._dispatch(reply)
                return True
            if self._state == S_CLOSED:          # garbage made it give up
                return True
        if self._eof:
            self._on_eof()
            return True
        return False

    def _read_reply(self):
        while True:
            end = self._rx.find(b"\n", self._rx_pos)
            if end < 0:
                if len(self._rx) - self._rx_pos > MAX_REPLY_LINE:
                    self._protocol_error("reply line longer than %d octets" % MAX_REPLY_LINE)
                return None
            raw = self._rx[self._rx_pos:end]
            self._rx_pos = end + 1
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            reply = self._add_line(raw)
            if reply is not None or self._state == S_CLOSED:
                return reply

    def _add_line(self, raw):
        parsed = parse_reply_line(raw) if len(raw) <= MAX_REPLY_LINE else None
        if parsed is None:
            return self._protocol_error("malformed reply line %r" % raw[:80])
        code, last, text = parsed
        if self._lines and code != self._code:
            return self._protocol_error("reply code changed from %d to %d" % (self._code, code))
        if len(self._lines) >= MAX_REPLY_LINES:
            return self._protocol_error("reply longer than %d lines" % MAX_REPLY_LINES)
        self._code = code
        self._lines.append(text)
        if not last:
            return None
        return self._finish_reply()

    def _finish_reply(self):
        code, lines, enhanced = self._code, [], None
        for line in self._lines:
            enh, rest = split_enhanced(code, line)
            if enh is not None and enhanced is None:
                enhanced = enh
            lines.append(rest if enh is not None else line)
        self._lines = []
        return Reply(code, enhanced, lines)

    # --- output helpers ---
    def _emit(self, event):
        self._events.append(event)

    def _send(self, kind, line, arg=None, sensitive=False):
        self._pending.append((kind, arg))
        self._emit(Send(line, sensitive))

    def _discard_input(self):
        self._rx = b""
        self._rx_pos = 0
        self._lines = []

    # --- replies ---
    def _dispatch(self, reply):
        if not self._pending:
            if reply.code == 421:
                return self._server_closing(reply)
            return self._protocol_error("unexpected reply %d %s" % (reply.code, reply.text))
        kind, arg = self._pending.pop(0)
        if kind not in _STATES[self._state][0]:
            raise ClientStateError("reply to %s in state %s" % (kind, self._state))
        if reply.code == 421 and kind != "quit":
            return self._server_closing(reply)
        _HANDLERS[kind](self, reply, arg)

    def _on_connect(self, reply, arg):
        if reply.code != 220:
            return self._fail_reply(reply, reply.code >= 500)
        self._emit(Greeting(reply.code, reply.enhanced, reply.text))
        self._send_ehlo()

    def _send_ehlo(self):
        self._goto(S_EHLO)
        self._send("ehlo", b"EHLO " + self.helo_name.encode() + b"\r\n")

    def _on_ehlo(self, reply, arg):
        if reply.code in (500, 502):
            self._goto(S_HELO)
            return self._send("helo", b"HELO " + self.helo_name.encode() + b"\r\n")
        if reply.code != 250:
            return self._fail_reply(reply, reply.code >= 500)
        self._got_capabilities(True, reply)

    def _on_helo(self, reply, arg):
        if reply.code != 250:
            return self._fail_reply(reply, reply.code >= 500)
        self._got_capabilities(False, reply)

    def _got_capabilities(self, esmtp, reply):
        keywords = {}
        for line in reply.lines[1:] if esmtp else ():
            word, _, param = line.strip().partition(" ")
            word = word.upper()
            if word.startswith("AUTH="):                     # old-style AUTH=LOGIN PLAIN
                word, param = "AUTH", word[5:] + " " + param
            if word:
                keywords[word] = (keywords.get(word, "") + " " + param).strip()
        self.capabilities = Capabilities(esmtp, reply.lines[0], keywords, self.tls_active)
        self._emit(self.capabilities)
        self._after_capabilities()

    def _after_capabilities(self):
        caps = self.capabilities
        if not self.tls_active and self.tls_mode != TLS_OFF and caps.starttls \
                and not self._starttls_tried:
            self._starttls_tried = True
            self._goto(S_STARTTLS)
            return self._send("starttls", b"STARTTLS\r\n")
        if not self.tls_active and self.tls_mode == TLS_REQUIRED:
            return self._fail_local("4.7.4", "TLS is required, but the server does not offer STARTTLS")
        self._maybe_auth()

    def _on_starttls(self, reply, arg):
        if reply.code == 220:
            self._discard_input()                # response injection: drop what follows
            self._goto(S_TLS)
            return self._emit(NeedTLS())
        if self.tls_mode == TLS_REQUIRED:
            return self._fail_reply(reply, False)
        self._maybe_auth()

    def tls_started(self):
        """Call after the TLS handshake that NeedTLS asked for; returns the new EHLO."""
        self._require(S_TLS, "tls_started")
        self._discard_input()
        self.tls_active = True
        self.capabilities = None
        self._goto(S_EHLO)
        self._pending.append(("ehlo", None))
        return b"EHLO " + self.helo_name.encode() + b"\r\n"

    # --- AUTH ---
    def _maybe_auth(self):
        if self._credentials is None or self.authenticated:
            return self._ready()
        if not (self.tls_active or self._auth_without_tls):
            return self._fail_local("4.7.0", "refusing to send credentials over a connection without TLS")
        offered = self.capabilities.auth
        mech = "PLAIN" if "PLAIN" in offered else "LOGIN" if "LOGIN" in offered else None
        if mech is None:
            return self._fail_local("4.7.0", "the server offers no AUTH PLAIN or LOGIN")
        self._goto(S_AUTH)
        self._auth_mech, self._auth_step = mech, 0
        if mech == "PLAIN":
            self._send("auth", b"AUTH PLAIN " + self._plain_response() + b"\r\n", sensitive=True)
        else:
            self._send("auth", b"AUTH LOGIN\r\n")

    def _plain_response(self):
        cred = self._credentials
        return _b64(b"\0" + cred.user.encode() + b"\0" + cred._password.encode())

    def _on_auth(self, reply, arg):
        if reply.code == 235:
            self.authenticated = True
            self._emit(Authenticated(self._auth_mech))
            return self._ready()
        self._auth_step += 1
        if reply.code != 334 or self._auth_step > 2 or \
                (self._auth_mech == "PLAIN" and self._auth_step > 1):
            return self._fail_reply(reply, False)
        cred = self._credentials
        if self._auth_mech == "PLAIN":
            answer = self._plain_response()
        elif self._auth_step == 1:
            answer = _b64(cred.user.encode())
        else:
            answer = _b64(cred._password.encode())
        self._send("auth", answer + b"\r\n", sensitive=True)

    def _ready(self):
        self._goto(S_READY)
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
        tx = _Transaction(message_token, list(recipients), caps.pipelining)
        refusal = self._refuse_message(caps, sender, size, eightbit)
        if refusal is not None:
            tx.settle_open(LOCAL_CODE, refusal[0], refusal[1], BOUNCED)
            return self._end_transaction(tx)
        self._screen_recipients(tx, caps)
        if not tx.to_send:
            return self._end_transaction(tx)
        self._tx = tx
        self._goto(S_MAIL)
        return self._open_transaction(tx, self._mail_command(caps, tx, sender, size, eightbit))

    def _refuse_message(self, caps, sender, size, eightbit):
        if _bad_path(sender):
            return "5.1.7", "bad sender address syntax"
        if eightbit and not caps.eightbitmime:
            return "5.6.3", "message has 8-bit content but the server does not offer 8BITMIME"
        if size is not None and caps.size and size > caps.size:
            return "5.3.4", "message size %d exceeds the server's limit of %d" % (size, caps.size)
        if not _is_ascii(sender) and not caps.smtputf8:
            return "5.6.7", "non-ASCII sender but the server does not offer SMTPUTF8"
        return None

    def _screen_recipients(self, tx, caps):
        for i, rcpt in enumerate(tx.rcpts):
            if _bad_path(rcpt) or not rcpt:
                tx.settle(i, LOCAL_CODE, "5.1.3", "bad recipient address syntax", BOUNCED)
            elif not _is_ascii(rcpt) and not caps.smtputf8:
                tx.settle(i, LOCAL_CODE, "5.6.7",
                          "non-ASCII recipient but the server does not offer SMTPUTF8", BOUNCED)
            else:
                tx.to_send.append(i)

    def _mail_command(self, caps, tx, sender, size, eightbit):
        params = ""
        if size is not None and caps.size is not None:
            params += " SIZE=%d" % size
        if eightbit:
            params += " BODY=8BITMIME"
        if caps.smtputf8 and not (_is_ascii(sender) and all(_is_ascii(r) for r in tx.rcpts)):
            params += " SMTPUTF8"
        return ("MAIL FROM:<%s>%s\r\n" % (sender, params)).encode()

    def _rcpt_command(self, tx, index):
        return ("RCPT TO:<%s>\r\n" % tx.rcpts[index]).encode()

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
            out.append(self._rcpt_command(tx, index))
        if tx.pipelined and tx.next_rcpt == len(tx.to_send):
            self._pending.append(("data", None))
            out.append(b"DATA\r\n")
        return b"".join(out)

    def _on_rset(self, reply, arg):
        tx = self._tx
        if not tx.pipelined:                     # lock-step: MAIL waited for this reply
            mail, self._pending_mail = self._pending_mail, None
            self._queue_mail(tx, mail)
            self._emit(Send(mail))

    def _on_mail(self, reply, arg):
        tx = self._tx
        tx.mail_ok = reply.code // 100 == 2
        if not tx.mail_ok:
            tx.settle_open(reply.code, reply.enhanced, reply.text)
            if not tx.pipelined:
                self._end_transaction(tx)
        elif not tx.pipelined:
            self._emit(Send(self._rcpt_batch(tx)))

    def _on_rcpt(self, reply, index):
        tx = self._tx
        if tx.mail_ok:
            if reply.code // 100 == 2:
                tx.accepted.append(index)
            else:
                tx.settle(index, reply.code, reply.enhanced, reply.text)
        if self._pending:                        # more replies of this batch to come
            return
        if tx.next_rcpt < len(tx.to_send):
            if not tx.mail_ok:                   # pipelined, MAIL refused: stop here
                return self._end_transaction(tx)
            return self._emit(Send(self._rcpt_batch(tx)))
        if tx.accepted:
            return self._send("data", b"DATA\r\n")
        self._need_rset = True                   # MAIL is open on the server
        self._end_transaction(tx)

    def _on_data(self, reply, arg):
        tx = self._tx
        if reply.code == 354 and tx.accepted:
            self._at_line_start = True
            self._goto(S_BODY)
            return self._emit(ReadyForBody(tx.token))
        if reply.code == 354:                    # no recipient, yet DATA accepted: end it empty
            self._goto(S_DOT)
            return self._send("discard", b".\r\n")
        for i in tx.accepted:
            tx.settle(i, reply.code, reply.enhanced, reply.text)
        self._need_rset = tx.mail_ok
        self._end_transaction(tx)

    def encode_body_chunk(self, data):
        """Dot-stuff one chunk of the (CRLF, unstuffed) body; returns the bytes to send."""
        self._require(S_BODY, "encode_body_chunk")
        data = bytes(data)
        if not data:
            return b""
        stuffed = data.replace(b"\n.", b"\n..")
        if self._at_line_start and data[0:1] == b".":
            stuffed = b"." + stuffed
        self._at_line_start = data[-1:] == b"\n"
        return stuffed

    def end_body(self):
        """End the body; returns the terminator (with a CRLF first if the body lacked one)."""
        self._require(S_BODY, "end_body")
        self._goto(S_DOT)
        self._pending.append(("dot", None))
        return b".\r\n" if self._at_line_start else b"\r\n.\r\n"

    def _on_dot(self, reply, arg):
        tx = self._tx
        for i in tx.accepted:
            tx.settle(i, reply.code, reply.enhanced, reply.text)
        self._end_transaction(tx)

    def _on_discard(self, reply, arg):
        self._end_transaction(self._tx)

    def _end_transaction(self, tx):
        tx.settle_open(LOCAL_CODE, "4.4.0", "no reply for this recipient")
        self._tx = None
        self._emit(TransactionResult(tx.token, tx.results))
        if self._state != S_READY:
            self._goto(S_READY)
        self._emit(Ready())
        return b""

    # --- the end ---
    def quit(self):
        """Say goodbye (state 'ready'); returns the bytes to send (b'' if already ending)."""
        if self._state in (S_QUIT, S_CLOSED):
            return b""
        self._require(S_READY, "quit")
        self._goto(S_QUIT)
        self._pending.append(("quit", None))
        return b"QUIT\r\n"

    def _on_quit(self, reply, arg):
        self._close()

    def _close(self):
        self._pending = []
        self._goto(S_CLOSED)
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
        self._goto(S_QUIT)
        self._send("quit", b"QUIT\r\n")

    def _server_closing(self, reply):
        self._abort_transaction(reply.code, reply.enhanced, reply.text)
        self._emit(ConnectionFailed(reply.code, reply.enhanced, reply.text, False))
        self._close()

    def _on_eof(self):
        if self._state == S_QUIT:
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
        return None

    # --- timeouts ---
    def waiting_for(self):
        """The phase the client waits in (PHASE_*), or None when it is the caller's turn."""
        if self._state == S_BODY:
            return PHASE_DATA_BLOCK
        if not self._pending or self._state == S_TLS:
            return None
        return _PHASE_OF_COMMAND.get(self._pending[0][0], PHASE_COMMAND)

    def timeout(self):
        """Seconds the I/O layer should wait in the current phase (None: no reply owed)."""
        phase = self.waiting_for()
        return TIMEOUTS[phase] if phase else None

    def _require(self, state, what):
        if self._state != state:
            raise ClientStateError("%s() in state %s" % (what, self._state))


_HANDLERS = {
    "connect": ClientConnection._on_connect,
    "ehlo": ClientConnection._on_ehlo,
    "helo": ClientConnection._on_helo,
    "starttls": ClientConnection._on_starttls,
    "auth": ClientConnection._on_auth,
    "rset": ClientConnection._on_rset,
    "mail": ClientConnection._on_mail,
    "rcpt": ClientConnection._on_rcpt,
    "data": ClientConnection._on_data,
    "dot": ClientConnection._on_dot,
    "discard": ClientConnection._on_discard,
    "quit": ClientConnection._on_quit,
}

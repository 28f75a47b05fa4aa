# meta1lite/proto/client_states.py - the SMTP client core's states and replies:
# the state names, the transition table (state -> states it may go to), which
# replies may be outstanding in each state, HANDLERS (what the reply to each
# command does), the Capabilities an EHLO reply announces, and Transaction, one
# message's per-recipient bookkeeping.
# Owns: what a reply means for the session, acted out through the connection's
# _set_state, _emit, _send, _ready, _end_transaction and _fail* methods; the bytes
# of MAIL and RCPT. Must never: read input (replies.ReplyReader frames it), set
# conn.state but through conn._set_state, raise on anything a server sends, put a
# password in an event, or send MAIL in clear when TLS is required.
# Runs on MicroPython and CPython.
import binascii

from meta1lite.const import const
from meta1lite.proto import events
from meta1lite.status import BOUNCED, DEFERRED, SENT

_MAX_ADDRESS_LENGTH = const(256)  # octets of a path (RFC 5321 section 4.5.3.1.3)
LOCAL_CODE = const(0)          # the code of a result this client decided, not the server

TLS_OPPORTUNISTIC = const("opportunistic")
TLS_REQUIRED = const("required")
TLS_OFF = const("off")
TLS_MODES = (TLS_OPPORTUNISTIC, TLS_REQUIRED, TLS_OFF)

# --- states ----------------------------------------------------------------------------
S_GREETING = const("greeting")  # connected, waiting for the 220
S_EHLO = const("ehlo")         # EHLO sent
S_HELO = const("helo")         # EHLO refused with 500/502, HELO sent
S_STARTTLS = const("starttls")  # STARTTLS sent
S_TLS = const("tls")           # 220 to STARTTLS seen; the I/O layer does the handshake
S_AUTH = const("auth")         # AUTH exchange under way
S_READY = const("ready")       # nothing outstanding: the caller starts a message or quits
S_MAIL = const("mail")         # RSET/MAIL/RCPT/DATA outstanding (one, or a pipelined batch)
S_BODY = const("body")         # 354 seen; the caller streams the body
S_DOT = const("dot")           # final dot sent
S_QUIT = const("quit")         # QUIT sent
S_CLOSED = const("closed")

# the states a state may go to are written as text: a tuple of constants stays in a
# board's flash, a tuple of names would be built in its heap (300 bytes); every one
# of them is a state (tests/core/test_states.py)
TRANSITIONS = {
    S_GREETING: ("ehlo", "quit", "closed"),
    S_EHLO: ("helo", "starttls", "auth", "ready", "quit", "closed"),
    S_HELO: ("auth", "ready", "quit", "closed"),
    S_STARTTLS: ("tls", "auth", "ready", "quit", "closed"),
    S_TLS: ("ehlo", "closed"),
    S_AUTH: ("ready", "quit", "closed"),
    S_READY: ("mail", "quit", "closed"),
    S_MAIL: ("body", "dot", "ready", "closed"),
    S_BODY: ("dot", "closed"),
    S_DOT: ("ready", "closed"),
    S_QUIT: ("closed",),
    S_CLOSED: (),
}

# state -> the commands whose replies may be outstanding in it
# replies:  connect 220 | ehlo 250 (500/502 -> HELO) | helo 250 | starttls 220 |
#           auth 235 (334 = next step) | rset 250 | mail 250 | rcpt 250/251 |
#           data 354 | dot 250 | quit 221.   421 anywhere: the server is closing.
EXPECTED = {
    S_GREETING: ("connect",), S_EHLO: ("ehlo",), S_HELO: ("helo",),
    S_STARTTLS: ("starttls",), S_TLS: (), S_AUTH: ("auth",), S_READY: (),
    S_MAIL: ("rset", "mail", "rcpt", "data"), S_BODY: (), S_DOT: ("dot", "discard"),
    S_QUIT: ("quit",), S_CLOSED: (),
}


# --- one message ----------------------------------------------------------------------
class Transaction:
    """One message's recipients, and their RecipientResults as the replies come."""

    def __init__(self, token, rcpts, pipelined):
        self.token = token
        self.rcpts = rcpts
        self.pipelined = pipelined
        self.results = [None] * len(rcpts)   # None: open; RecipientResult: final
        self.to_send = []                    # indexes of recipients given to the server
        self.accepted = []                   # indexes the server accepted at RCPT
        self.next_rcpt = 0                   # lock-step: position in to_send
        self.mail_ok = False

    def settle(self, index, code, enhanced, text, status=None):
        result = events.RecipientResult(self.rcpts[index], code, enhanced, text,
                                        status or _status_of(code))
        self.results[index] = result

    def settle_open(self, code, enhanced, text, status=None):
        for i in range(len(self.rcpts)):
            if self.results[i] is None:
                self.settle(i, code, enhanced, text, status)

    def screen(self, caps):
        """Settle the recipients the server cannot take; queue the others in to_send."""
        for i, rcpt in enumerate(self.rcpts):
            if bad_path(rcpt) or not rcpt:
                self.settle(i, LOCAL_CODE, "5.1.3", "bad recipient address syntax", BOUNCED)
            elif not _is_ascii(rcpt) and not caps.smtputf8:
                self.settle(i, LOCAL_CODE, "5.6.7",
                            "non-ASCII recipient but the server does not offer SMTPUTF8", BOUNCED)
            else:
                self.to_send.append(i)

    def mail_command(self, caps, sender, size, eightbit):
        params = ""
        if size is not None and caps.size is not None:
            params += " SIZE=%d" % size
        if eightbit:
            params += " BODY=8BITMIME"
        if caps.smtputf8 and not (_is_ascii(sender) and all(_is_ascii(r) for r in self.rcpts)):
            params += " SMTPUTF8"
        return ("MAIL FROM:<%s>%s\r\n" % (sender, params)).encode()

    def rcpt_command(self, index):
        return ("RCPT TO:<%s>\r\n" % self.rcpts[index]).encode()


def message_refusal(caps, sender, size, eightbit):
    """(enhanced, text) when the server cannot take the message at all, else None."""
    if bad_path(sender):
        return "5.1.7", "bad sender address syntax"
    if eightbit and not caps.eightbitmime:
        return "5.6.3", "message has 8-bit content but the server does not offer 8BITMIME"
    if size is not None and caps.size and size > caps.size:
        return "5.3.4", "message size %d exceeds the server's limit of %d" % (size, caps.size)
    if not _is_ascii(sender) and not caps.smtputf8:
        return "5.6.7", "non-ASCII sender but the server does not offer SMTPUTF8"
    return None


def _status_of(code):
    if code // 100 == 2:
        return SENT
    if code // 100 == 5:
        return BOUNCED
    return DEFERRED


def _is_ascii(text):
    # no loop over characters: on MicroPython each would be looked up among the
    # interned strings
    return len(text.encode()) == len(text)


def bad_path(address):
    """True when `address` cannot go into a command: too long, or CR, LF, NUL, < or >."""
    if len(address.encode()) > _MAX_ADDRESS_LENGTH:
        return True
    for ch in "\r\n\0<>":
        if ch in address:
            return True
    return False


# --- EHLO -------------------------------------------------------------------------
class Capabilities(events.Event):
    _hidden = ("keywords",)             # their meaning is in the other fields

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


def _size_limit(param):
    if param is None:
        return None
    word = param.split(" ")[0] if param else ""
    return int(word) if word.isdigit() else 0


def capabilities(esmtp, reply, tls_active):
    """The Capabilities a 250 reply to EHLO (esmtp) or HELO announces."""
    keywords = {}
    for line in reply.lines[1:] if esmtp else ():
        word, _, param = line.strip().partition(" ")
        word = word.upper()
        if word.startswith("AUTH="):                     # old-style AUTH=LOGIN PLAIN
            word, param = "AUTH", word[5:] + " " + param
        if word:
            keywords[word] = (keywords.get(word, "") + " " + param).strip()
    return Capabilities(esmtp, reply.lines[0], keywords, tls_active)


# --- replies before the first message -----------------------------------------------------
def _on_connect(conn, reply, arg):
    if reply.code != 220:
        return conn._fail_reply(reply, reply.code >= 500)
    conn._emit(events.Greeting(reply.code, reply.enhanced, reply.text))
    conn._set_state(S_EHLO, "connect")
    conn._send("ehlo", conn.ehlo_command())


def _on_ehlo(conn, reply, arg):
    if reply.code in (500, 502):
        conn._set_state(S_HELO, "ehlo")
        return conn._send("helo", b"HELO " + conn.helo_name.encode() + b"\r\n")
    if reply.code != 250:
        return conn._fail_reply(reply, reply.code >= 500)
    _got_capabilities(conn, True, reply)


def _on_helo(conn, reply, arg):
    if reply.code != 250:
        return conn._fail_reply(reply, reply.code >= 500)
    _got_capabilities(conn, False, reply)


def _got_capabilities(conn, esmtp, reply):
    conn.capabilities = capabilities(esmtp, reply, conn.tls_active)
    conn._emit(conn.capabilities)
    if not conn.tls_active and conn.tls_mode != TLS_OFF and conn.capabilities.starttls \
            and not conn._starttls_tried:
        conn._starttls_tried = True
        conn._set_state(S_STARTTLS, "ehlo")
        return conn._send("starttls", b"STARTTLS\r\n")
    if not conn.tls_active and conn.tls_mode == TLS_REQUIRED:
        return conn._fail_local("4.7.4", "TLS is required, but the server does not offer STARTTLS")
    _maybe_auth(conn)


def _on_starttls(conn, reply, arg):
    if reply.code == 220:
        conn._discard_input()                # response injection: drop what follows
        conn._set_state(S_TLS, "starttls")
        return conn._emit(events.NeedTLS())
    if conn.tls_mode == TLS_REQUIRED:
        return conn._fail_reply(reply, False)
    _maybe_auth(conn)


def _maybe_auth(conn):
    if conn._credentials is None or conn.authenticated:
        return conn._ready("auth")
    if not (conn.tls_active or conn._auth_without_tls):
        return conn._fail_local("4.7.0", "refusing to send credentials over a connection without TLS")
    offered = conn.capabilities.auth
    mech = "PLAIN" if "PLAIN" in offered else "LOGIN" if "LOGIN" in offered else None
    if mech is None:
        return conn._fail_local("4.7.0", "the server offers no AUTH PLAIN or LOGIN")
    conn._set_state(S_AUTH, "auth")
    conn._auth_mech, conn._auth_step = mech, 0
    if mech == "PLAIN":
        conn._send("auth", b"AUTH PLAIN " + _auth_answer(conn) + b"\r\n", sensitive=True)
    else:
        conn._send("auth", b"AUTH LOGIN\r\n")


def _on_auth(conn, reply, arg):
    if reply.code == 235:
        conn.authenticated = True
        conn._emit(events.Authenticated(conn._auth_mech))
        return conn._ready("auth")
    conn._auth_step += 1
    if reply.code != 334 or conn._auth_step > 2 or \
            (conn._auth_mech == "PLAIN" and conn._auth_step > 1):
        return conn._fail_reply(reply, False)
    conn._send("auth", _auth_answer(conn) + b"\r\n", sensitive=True)


def _auth_answer(conn):
    """PLAIN: the whole response; LOGIN: the user at step 1, the password at step 2."""
    cred = conn._credentials
    if conn._auth_mech == "PLAIN":
        data = b"\0" + cred.user.encode() + b"\0" + cred._password.encode()
    else:
        data = (cred.user if conn._auth_step == 1 else cred._password).encode()
    return binascii.b2a_base64(data)[:-1]


# --- replies in a transaction ---------------------------------------------------------------
def _on_rset(conn, reply, arg):
    tx = conn._tx
    if not tx.pipelined:                     # lock-step: MAIL waited for this reply
        mail, conn._pending_mail = conn._pending_mail, None
        conn._queue_mail(tx, mail)
        conn._emit(events.Send(mail))


def _on_mail(conn, reply, arg):
    tx = conn._tx
    tx.mail_ok = reply.code // 100 == 2
    if not tx.mail_ok:
        tx.settle_open(reply.code, reply.enhanced, reply.text)
        if not tx.pipelined:
            conn._end_transaction(tx)
    elif not tx.pipelined:
        conn._emit(events.Send(conn._rcpt_batch(tx)))


def _on_rcpt(conn, reply, index):
    tx = conn._tx
    if tx.mail_ok:
        if reply.code // 100 == 2:
            tx.accepted.append(index)
        else:
            tx.settle(index, reply.code, reply.enhanced, reply.text)
    if conn._pending:                        # more replies of this batch to come
        return
    if tx.next_rcpt < len(tx.to_send):
        if not tx.mail_ok:                   # pipelined, MAIL refused: stop here
            return conn._end_transaction(tx)
        return conn._emit(events.Send(conn._rcpt_batch(tx)))
    if tx.accepted:
        return conn._send("data", b"DATA\r\n")
    conn._need_rset = True                   # MAIL is open on the server
    conn._end_transaction(tx)


def _on_data(conn, reply, arg):
    tx = conn._tx
    if reply.code == 354 and tx.accepted:
        conn._at_line_start = True
        conn._set_state(S_BODY, "data")
        return conn._emit(events.ReadyForBody(tx.token))
    if reply.code == 354:                    # no recipient, yet DATA accepted: end it empty
        conn._set_state(S_DOT, "data")
        return conn._send("discard", b".\r\n")
    for i in tx.accepted:
        tx.settle(i, reply.code, reply.enhanced, reply.text)
    conn._need_rset = tx.mail_ok
    conn._end_transaction(tx)


def _on_dot(conn, reply, arg):
    tx = conn._tx
    for i in tx.accepted:
        tx.settle(i, reply.code, reply.enhanced, reply.text)
    conn._end_transaction(tx)


def _on_discard(conn, reply, arg):
    conn._end_transaction(conn._tx)


def _on_quit(conn, reply, arg):
    conn._close()


# the command a reply answers -> what the reply does: handler(conn, reply, arg)
HANDLERS = {
    "connect": _on_connect,
    "ehlo": _on_ehlo,
    "helo": _on_helo,
    "starttls": _on_starttls,
    "auth": _on_auth,
    "rset": _on_rset,
    "mail": _on_mail,
    "rcpt": _on_rcpt,
    "data": _on_data,
    "dot": _on_dot,
    "discard": _on_discard,
    "quit": _on_quit,
}

# meta1lite/proto/server_states.py - the SMTP server core's states and commands:
# the state names, the transition table (state -> states it may go to), the
# command table of (check, act) pairs ServerConnection dispatches a line to, and
# the AUTH PLAIN/LOGIN exchange (RFC 4954).
# Owns: which command may run in which state and what it does to the session,
# through the connection's _set_state, _emit, _reply and _error. Must never: read
# input (ServerConnection and server_data frame it), set conn.state but through
# conn._set_state, raise on anything a client sends, or decide policy (MAIL,
# RCPT, DATA and AUTH pause for the I/O layer's decision).
# Runs on MicroPython and CPython.
import binascii

from meta1lite.const import const
from meta1lite.proto import address, events, replies
from meta1lite.proto.replies import format_reply

_MAX_HELO_NAME = const(255)
_MAX_SIZE_DIGITS = const(20)

# --- states -------------------------------------------------------------------
CONNECTED = "connected"        # greeting sent, no EHLO/HELO yet
GREETED = "greeted"            # EHLO/HELO done, no transaction
MAIL = "mail"                  # MAIL accepted
RCPT = "rcpt"                  # at least one RCPT accepted
DATA = "data"                  # 354 sent, reading the message
AUTH = "auth"                  # 334 sent, waiting for the client's response line
STARTTLS = "starttls"          # 220 sent, waiting for tls_started()
CLOSED = "closed"

# the states a state may go to are written as text: a tuple of constants stays in a
# board's flash, a tuple of names would be built in its heap (150 bytes); every one
# of them is a state (tests/core/test_states.py)
TRANSITIONS = {
    CONNECTED: ("greeted", "closed"),
    GREETED: ("mail", "auth", "starttls", "closed"),
    MAIL: ("rcpt", "greeted", "closed"),
    RCPT: ("data", "greeted", "closed"),
    DATA: ("greeted", "closed"),
    AUTH: ("greeted", "closed"),
    STARTTLS: ("connected", "closed"),
    CLOSED: (),
}

_PROMPT_USER = "VXNlcm5hbWU6"      # base64 "Username:"
_PROMPT_PASSWORD = "UGFzc3dvcmQ6"  # base64 "Password:"
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


# --- checks: None when the command may run now, else the refusal -----------------
def _anytime(conn, arg):
    return None


def _no_argument(conn, arg):
    return replies.NO_ARGUMENTS if arg.strip() else None


def _check_mail(conn, arg):
    if conn.state == CONNECTED:
        return replies.NEED_HELO
    if conn.state in (MAIL, RCPT):
        return replies.NESTED_MAIL
    return None


def _check_rcpt(conn, arg):
    if conn.state == CONNECTED:
        return replies.NEED_HELO
    return None if conn.state in (MAIL, RCPT) else replies.NEED_MAIL


def _check_data(conn, arg):
    if conn.state == MAIL:
        return replies.NO_VALID_RECIPIENTS
    if conn.state != RCPT:
        return replies.NEED_RCPT
    return _no_argument(conn, arg)


def _check_starttls(conn, arg):
    if not conn.tls_available:
        return replies.NOT_IMPLEMENTED
    if conn.tls:
        return replies.ALREADY_TLS
    if conn.state != GREETED or not conn.esmtp:
        return replies.BAD_SEQUENCE
    return _no_argument(conn, arg)


def _check_auth(conn, arg):
    if not conn.auth_available:
        return replies.AUTH_NOT_AVAILABLE
    if conn.authenticated is not None:
        return replies.AUTH_ALREADY
    if conn.state != GREETED or not conn.esmtp:
        return replies.BAD_SEQUENCE
    if conn.auth_requires_tls and not conn.tls:
        return replies.AUTH_NEEDS_TLS
    return None


# --- actions -------------------------------------------------------------------
def _helo_name(arg):
    name = arg.strip(b" ")
    if not name or len(name) > _MAX_HELO_NAME:
        return None
    for byte in name:
        if byte <= 32 or byte >= 127:
            return None
    return name.decode()


def _do_helo(conn, verb, arg):
    if conn.helo_name is not None and conn._junk():     # a repeated HELO/EHLO does nothing
        return
    name = _helo_name(arg)
    if name is None:
        return conn._error(replies.HELO_SYNTAX)
    conn._reset_transaction()
    conn.helo_name = name
    conn.esmtp = verb == "EHLO"
    conn._set_state(GREETED, verb)
    conn._emit(events.Helo(name, conn.esmtp))
    if conn.esmtp:
        data = format_reply(250, None, [conn.hostname] + conn.ehlo_keywords())
    else:
        data = format_reply(250, None, conn.hostname)
    conn._emit(events.Reply(250, None, data))


def _path_and_params(arg, prefix, syntax):
    """(path, params) of `arg` after the case-insensitive `prefix` (FROM:/TO:);
    raises AddressError (`syntax` when the prefix is missing)."""
    if arg[:len(prefix)].upper() != prefix:
        raise address.AddressError(syntax)
    path, raw_params = address.split_path(arg[len(prefix):])
    return path, address.parse_params(raw_params)


def _mail_params(params, smtputf8_offered):
    """Validate MAIL parameters -> (size, body, smtputf8); raises AddressError."""
    size = body = None
    for key in params:
        value = params[key]
        if key == "SIZE":
            if not value or len(value) > _MAX_SIZE_DIGITS or not value.isdigit():
                raise address.AddressError(replies.BAD_PARAMETER, "Bad SIZE value")
            size = int(value)
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise address.AddressError(replies.BAD_PARAMETER, "Bad BODY value")
            body = value.upper()
        elif key == "SMTPUTF8" and smtputf8_offered:
            if value is not None:
                raise address.AddressError(replies.BAD_PARAMETER, "SMTPUTF8 takes no value")
        elif key != "AUTH":
            raise address.AddressError(replies.UNKNOWN_PARAMETER, "Unsupported parameter %s" % key)
    return size, body, "SMTPUTF8" in params


def _do_mail(conn, verb, arg):
    try:
        path, params = _path_and_params(arg, b"FROM:", replies.MAIL_SYNTAX)
        size, body, utf8 = _mail_params(params, conn.smtputf8)
        mailbox = address.parse_path(path, sender=True, smtputf8=utf8)
    except address.AddressError as exc:
        return conn._error(exc.reply, exc.detail)
    if size is not None and conn.max_message_size and size > conn.max_message_size:
        return conn._reply(replies.MESSAGE_TOO_BIG)
    conn._offered = events.MailFrom(mailbox, params, size, body, utf8)
    conn._pending = "mail"
    conn._emit(conn._offered)


def _do_rcpt(conn, verb, arg):
    try:
        path, params = _path_and_params(arg, b"TO:", replies.RCPT_SYNTAX)
        if params:
            raise address.AddressError(replies.UNKNOWN_PARAMETER)
        mailbox = address.parse_path(path, smtputf8=conn.mail.smtputf8, allow_postmaster=True)
    except address.AddressError as exc:
        return conn._error(exc.reply, exc.detail)
    if conn.max_recipients and conn.recipients >= conn.max_recipients:
        return conn._reply(replies.TOO_MANY_RECIPIENTS)     # not an error: the client
                                                            # sends the rest later
    conn._pending = "rcpt"
    conn._emit(events.RcptTo(mailbox, params))


def _do_data(conn, verb, arg):
    conn._pending = "data"
    conn._emit(events.DataStart())


def _do_rset(conn, verb, arg):
    if conn._junk():
        return
    conn._reset_transaction()
    if conn.state != CONNECTED:
        conn._set_state(GREETED, verb)
    conn._emit(events.Rset())
    conn._reply(replies.RESET_OK)


def _do_noop(conn, verb, arg):
    if not conn._junk():
        conn._reply(replies.OK)


def _do_help(conn, verb, arg):
    if conn._junk():
        return
    text = replies.HELP
    if conn.tls_available and not conn.tls:
        text += " STARTTLS"
    if conn.auth_available:
        text += " AUTH"
    conn._reply(text)


def _do_vrfy(conn, verb, arg):
    if conn._junk():
        return
    if not arg.strip():
        return conn._error(replies.VRFY_SYNTAX)
    conn._reply(replies.VRFY_CANNOT)


def _do_quit(conn, verb, arg):
    conn._emit(events.Quit())
    conn._reply(replies.BYE)
    conn._close("quit")


def _do_starttls(conn, verb, arg):
    conn._reply(replies.READY_TLS)
    conn._discard_input()            # plaintext pipelined after STARTTLS: never a command
    conn._set_state(STARTTLS, verb)
    conn._emit(events.StartTLS())


def _do_auth(conn, verb, arg):
    words = arg.split()
    if not words or len(words) > 2:
        return conn._error(replies.SYNTAX_ERROR)
    mechanism = words[0].upper().decode()
    if mechanism not in ("PLAIN", "LOGIN"):
        return conn._error(replies.AUTH_UNKNOWN_MECHANISM)
    if len(words) == 1:
        prompt = "" if mechanism == "PLAIN" else _PROMPT_USER
        return _auth_prompt(conn, mechanism, None, prompt)
    conn._auth_progress = (mechanism, None)
    auth_line(conn, words[1])


# --- the AUTH exchange (state AUTH: every line is a response) ---------------------
def auth_line(conn, line):
    """One base64 response line of the AUTH exchange under way."""
    mechanism, user = conn._auth_progress
    if line == b"*":
        return _auth_abort(conn, replies.AUTH_CANCELLED)
    data = _b64decode(line)
    if data is None:
        return _auth_abort(conn, replies.AUTH_BAD_BASE64)
    if mechanism == "PLAIN":
        return _auth_plain(conn, data)
    text = _utf8(data)
    if text is None:
        return _auth_abort(conn, replies.AUTH_BAD_BASE64)
    if user is None:
        return _auth_prompt(conn, "LOGIN", text, _PROMPT_PASSWORD)
    _auth_request(conn, "LOGIN", user, text, "")


def _auth_abort(conn, reply):
    conn._set_state(GREETED, "AUTH")
    conn._error(reply)


def _auth_plain(conn, data):
    parts = data.split(b"\x00")
    fields = [_utf8(part) for part in parts]
    if len(parts) != 3 or None in fields:
        return _auth_abort(conn, replies.AUTH_BAD_BASE64)
    _auth_request(conn, "PLAIN", fields[1], fields[2], fields[0])


def _auth_prompt(conn, mechanism, user, prompt):
    conn._auth_progress = (mechanism, user)
    conn._set_state(AUTH, "AUTH")
    conn._emit(events.Reply(334, None, format_reply(334, None, prompt)))


def _auth_request(conn, mechanism, user, password, authzid):
    conn._set_state(GREETED, "AUTH")
    conn._auth = user
    conn._pending = "auth"
    conn._emit(events.AuthRequest(mechanism, user, password, authzid))


def _utf8(data):
    try:
        return data.decode("utf-8")
    except UnicodeError:
        return None


def _b64decode(text):
    """Strict base64 (RFC 4954: "=" alone is the empty response) -> bytes or None."""
    if text == b"=":
        return b""
    if not text or len(text) % 4:
        return None
    for byte in text:
        if byte not in _B64:
            return None
    try:
        return binascii.a2b_base64(text)
    except ValueError:
        return None


COMMANDS = {
    b"EHLO": (_anytime, _do_helo),
    b"HELO": (_anytime, _do_helo),
    b"MAIL": (_check_mail, _do_mail),
    b"RCPT": (_check_rcpt, _do_rcpt),
    b"DATA": (_check_data, _do_data),
    b"RSET": (_no_argument, _do_rset),
    b"NOOP": (_anytime, _do_noop),
    b"QUIT": (_no_argument, _do_quit),
    b"VRFY": (_anytime, _do_vrfy),
    b"HELP": (_anytime, _do_help),
    b"STARTTLS": (_check_starttls, _do_starttls),
    b"AUTH": (_check_auth, _do_auth),
}

# known, deliberately not implemented: 502 5.5.1 rather than 500 5.5.2
UNIMPLEMENTED = (b"EXPN", b"TURN", b"ETRN", b"ATRN", b"BDAT", b"SEND", b"SOML", b"SAML",
                 b"VERB", b"ONEX")

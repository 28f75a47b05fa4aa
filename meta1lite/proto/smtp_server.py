# meta1lite/proto/smtp_server.py - sans-I/O SMTP server core (RFC 5321 with
# PIPELINING RFC 2920, SIZE RFC 1870, 8BITMIME RFC 6152, ENHANCEDSTATUSCODES RFC
# 2034/3463, STARTTLS RFC 3207, AUTH PLAIN/LOGIN RFC 4954, SMTPUTF8 RFC 6531).
#
# Owns: command-line framing (bounded; over-long lines are drained, never held),
# the session state machine (one command table of (check, act) pairs; ONE method,
# _set_state, changes state and records a StateChange event), DATA framing and
# dot-unstuffing, the replies the protocol alone decides, and the EHLO list.
# Must never: touch sockets, files, clocks, the spool or configuration objects;
# decide policy (relay, queue space, credentials: the I/O layer answers the
# MailFrom/RcptTo/DataStart/DataEnd/AuthRequest events with the decision methods);
# raise on anything a client sends; hold a message in memory.
#
# DATA framing (SMTP smuggling): the only end of data is CRLF "." CRLF (or "."
# CRLF as the very first line). Line starts (for the end dot and for dot-unstuffing)
# are decided on the raw bytes: only a real CRLF starts a line, so a bare LF or
# bare CR ("\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\n") never ends or splits the
# message. bare_lf="reject" (default): such a message is drained to the real final
# dot and refused with 550 5.5.2. bare_lf="normalize": every bare LF and every bare
# CR is written out as CRLF (never dropped), and the line after it is NOT treated as
# a line start, so its leading dot is kept as data; the next hop's client
# dot-stuffs it again, so nothing a lenient server could read as end-of-data is
# ever passed on. Over-long lines (> max_line octets incl. CRLF, counted as
# received, stuffing dot included) -> 500 5.5.2, over max_message_size (counted
# after unstuffing) -> 552 5.3.4; both only after the final dot, the session stays
# usable. DataChunk bytes are unstuffed, CRLF-only, at most DATA_CHUNK + 2 octets.
#
# Use (the I/O layer):
#     conn = ServerConnection("relay.example", max_message_size=10485760, ...)
#     write(conn.greeting())
#     loop: ev = conn.next_event()
#       NEED_DATA  -> write what was collected; conn.receive_data(read(<= READ_MAX))
#                     (b"" on EOF)
#       PAUSED     -> a decision is due (or STARTTLS is under way): see below
#       Reply      -> write ev.data (replies are in order; batch until NEED_DATA)
#       MailFrom   -> write conn.accept_mail() or conn.reject_mail(452, "4.3.1", ...)
#       RcptTo     -> write conn.accept_rcpt() or conn.reject_rcpt(554, "5.7.1", ...)
#       DataStart  -> open a spool file; write conn.accept_data() (354) or reject_data
#       DataChunk  -> append ev.data to the spool file as-is
#       DataEnd    -> ok: commit durably, then write conn.accept_message(...) (250);
#                     not ok: discard the file (the core's Reply with the 5xx follows)
#       AuthRequest-> check; write conn.accept_auth() or conn.reject_auth(...)
#       StartTLS   -> write the pending 220 first, upgrade the socket, conn.tls_started()
#       Helo, Rset -> drop any transaction in progress; Quit, StateChange -> log
#       Close      -> close the socket (after writing what was collected)
# The I/O layer may end a session itself with conn.shutdown(421, "4.4.2", ...).
import binascii

from meta1lite.proto import address, replies
from meta1lite.proto.replies import format_reply, reply_bytes

# --- limits -------------------------------------------------------------------
MAX_COMMAND_LINE = 512         # octets incl. CRLF, RFC 5321 section 4.5.3.1.4
MAX_DATA_LINE = 1000           # octets incl. CRLF, section 4.5.3.1.6
DATA_CHUNK = 4096              # octets of message per DataChunk event
MAX_BUFFER = 16384             # unprocessed input octets; read at most READ_MAX at a time
READ_MAX = MAX_BUFFER - MAX_COMMAND_LINE
MAX_BAD_COMMANDS = 10          # errors before 421 4.7.0 and close
MAX_HELO_NAME = 255
MAX_SIZE_DIGITS = 20

# --- states -------------------------------------------------------------------
CONNECTED = "connected"        # greeting sent, no EHLO/HELO yet
GREETED = "greeted"            # EHLO/HELO done, no transaction
MAIL = "mail"                  # MAIL accepted
RCPT = "rcpt"                  # at least one RCPT accepted
DATA = "data"                  # 354 sent, reading the message
AUTH = "auth"                  # 334 sent, waiting for the client's response line
STARTTLS = "starttls"          # 220 sent, waiting for tls_started()
CLOSED = "closed"

BARE_LF_REJECT = "reject"
BARE_LF_NORMALIZE = "normalize"

_CR, _LF, _DOT = 13, 10, 46
_PROMPT_USER = "VXNlcm5hbWU6"      # base64 "Username:"
_PROMPT_PASSWORD = "UGFzc3dvcmQ6"  # base64 "Password:"
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


class UsageError(Exception):
    """The I/O layer called the core out of turn (a bug, never the client's doing)."""


class _Sentinel:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")   # feed receive_data()
PAUSED = _Sentinel("PAUSED")         # a decision method (or tls_started) is due


# --- events -------------------------------------------------------------------
class Event:
    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, self._fields())

    def _fields(self):
        return ", ".join(["%s=%r" % (k, v) for k, v in sorted(self.__dict__.items())])


class Reply(Event):
    """A reply the core decided; write `data`. `code`/`enhanced` for logging."""

    def __init__(self, code, enhanced, data):
        self.code = code
        self.enhanced = enhanced
        self.data = data


class Helo(Event):
    def __init__(self, name, esmtp):
        self.name = name
        self.esmtp = esmtp


class MailFrom(Event):
    def __init__(self, mailbox, params, size, body, smtputf8):
        self.mailbox = mailbox
        self.params = params
        self.size = size
        self.body = body
        self.smtputf8 = smtputf8


class RcptTo(Event):
    def __init__(self, mailbox, params):
        self.mailbox = mailbox
        self.params = params


class DataStart(Event):
    pass


class DataChunk(Event):
    def __init__(self, data):
        self.data = data


class DataEnd(Event):
    def __init__(self, ok, reply_if_rejected, size):
        self.ok = ok
        self.reply_if_rejected = reply_if_rejected
        self.size = size


class StartTLS(Event):
    pass


class AuthRequest(Event):
    def __init__(self, mechanism, user, password, authzid=""):
        self.mechanism = mechanism
        self.user = user
        self.password = password
        self.authzid = authzid

    def _fields(self):
        return "%s, user=%r" % (self.mechanism, self.user)


class Rset(Event):
    pass


class Quit(Event):
    pass


class Close(Event):
    def __init__(self, reason):
        self.reason = reason


class StateChange(Event):
    def __init__(self, old, new, cause):
        self.old = old
        self.new = new
        self.cause = cause


class ServerConnection:
    """One SMTP session's protocol state, sans I/O (see the module header)."""

    def __init__(self, hostname, max_message_size=0, max_recipients=100,
                 max_line=MAX_DATA_LINE, max_command_line=MAX_COMMAND_LINE,
                 max_bad_commands=MAX_BAD_COMMANDS, tls_available=False, tls_active=False,
                 auth_available=False, auth_requires_tls=True, bare_lf=BARE_LF_REJECT,
                 smtputf8=True, max_buffer=MAX_BUFFER, data_chunk=DATA_CHUNK):
        if bare_lf not in (BARE_LF_REJECT, BARE_LF_NORMALIZE):
            raise ValueError("bare_lf must be 'reject' or 'normalize'")
        self.hostname = hostname
        self.max_message_size = max_message_size
        self.max_recipients = max_recipients
        self.max_line = max_line
        self.max_command_line = max_command_line
        self.max_bad_commands = max_bad_commands
        self.tls_available = tls_available
        self.auth_available = auth_available
        self.auth_requires_tls = auth_requires_tls
        self.bare_lf = bare_lf
        self.smtputf8 = smtputf8
        self.max_buffer = max_buffer
        self.data_chunk = data_chunk
        self.tls = tls_active
        self.state = CONNECTED
        self.helo_name = None
        self.esmtp = False
        self.authenticated = None
        self.bad_commands = 0
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._draining = False
        self._events = []
        self._pending = None
        self._closed_event = None
        self._auth = None
        self._reset_transaction()

    # --- bookkeeping ---------------------------------------------------------
    def _reset_transaction(self):
        self.mail = None
        self.recipients = 0
        self._offered = None

    def _set_state(self, new, cause):
        """The one place where the session state changes (and is recorded)."""
        old = self.state
        if old != new:
            self.state = new
            self._events.append(StateChange(old, new, cause))

    def _emit(self, event):
        self._events.append(event)

    def _reply(self, reply, text=None):
        code, enhanced, default = reply
        self._emit(Reply(code, enhanced, format_reply(code, enhanced, text or default)))

    def _error(self, reply, text=None):
        self._reply(reply, text)
        self.bad_commands += 1
        if self.max_bad_commands and self.bad_commands >= self.max_bad_commands:
            self._reply(replies.TOO_MANY_ERRORS)
            self._close("too many errors")

    def _close(self, reason):
        self._buf = b""
        self._pos = 0
        self._pending = None
        self._set_state(CLOSED, reason)
        self._closed_event = Close(reason)
        self._emit(self._closed_event)

    def _discard_input(self):
        self._buf = b""
        self._pos = 0

    # --- the h11-style surface -------------------------------------------------
    def greeting(self):
        """Bytes of the 220 greeting (no enhanced code, RFC 2034 section 3)."""
        return format_reply(220, None, "%s ESMTP meta1lite" % self.hostname)

    def send_reply(self, code, enhanced, text):
        """Bytes of any reply (text: str or list of lines for a multi-line reply)."""
        return format_reply(code, enhanced, text)

    def receive_data(self, data):
        """Feed bytes from the client; b"" means end of file. Call only after
        next_event() returned NEED_DATA; raises UsageError past max_buffer."""
        if self.state in (CLOSED, STARTTLS):
            return
        if not data:
            self._eof = True
            return
        left = len(self._buf) - self._pos
        if left + len(data) > self.max_buffer:
            raise UsageError("receive_data: %d octets unprocessed" % (left + len(data)))
        self._buf = self._buf[self._pos:] + bytes(data)
        self._pos = 0

    def next_event(self):
        """The next event, NEED_DATA, or PAUSED (a decision or tls_started() is due)."""
        if self._events:
            return self._events.pop(0)
        if self.state == CLOSED:
            return self._closed_event
        if self._pending or self.state == STARTTLS:
            return PAUSED
        if self.state == DATA:
            self._data_step()
        else:
            self._command_step()
        if self._events:
            return self._events.pop(0)
        if self._eof:
            self._close("eof during DATA" if self.state == DATA else "eof")
            return self._events.pop(0)
        return NEED_DATA

    def buffered(self):
        """Octets received and not yet processed (bounded by max_buffer)."""
        return len(self._buf) - self._pos

    def received_protocol(self):
        """The `with` keyword of a Received: header (RFC 3848, RFC 6531)."""
        utf8 = self.mail is not None and self.mail.smtputf8
        name = "UTF8SMTP" if utf8 else ("ESMTP" if self.esmtp else "SMTP")
        return name + ("S" if self.tls else "") + ("A" if self.authenticated else "")

    # --- decisions of the I/O layer --------------------------------------------
    def _decide(self, what):
        if self._pending != what:
            raise UsageError("no %s decision is due (pending: %r)" % (what, self._pending))
        self._pending = None

    def accept_mail(self, text=None):
        """Accept the MailFrom just returned; bytes of the 250."""
        self._decide("mail")
        self.mail = self._offered
        self._set_state(MAIL, "MAIL")
        return reply_bytes(replies.SENDER_OK, text)

    def reject_mail(self, code=452, enhanced="4.3.1", text="Insufficient system storage"):
        """Refuse the MailFrom (e.g. queue full); bytes of the reply."""
        self._decide("mail")
        self._offered = None
        return format_reply(code, enhanced, text)

    def accept_rcpt(self, text=None):
        """Accept the RcptTo just returned; bytes of the 250."""
        self._decide("rcpt")
        self.recipients += 1
        self._set_state(RCPT, "RCPT")
        return reply_bytes(replies.RECIPIENT_OK, text)

    def reject_rcpt(self, code=554, enhanced="5.7.1", text="Relay access denied"):
        """Refuse the RcptTo (554 5.7.1 relay denied, 550 5.1.1 unknown...)."""
        self._decide("rcpt")
        return format_reply(code, enhanced, text)

    def accept_data(self):
        """Start reading the message; bytes of the 354."""
        self._decide("data")
        self._start_data()
        self._set_state(DATA, "DATA")
        return reply_bytes(replies.START_DATA)

    def reject_data(self, code=452, enhanced="4.3.1", text="Insufficient system storage"):
        """Refuse DATA before the 354; the transaction stays open."""
        self._decide("data")
        return format_reply(code, enhanced, text)

    def accept_message(self, text="OK: queued"):
        """The message is durable: bytes of the 250 to the final dot."""
        self._decide("message")
        return format_reply(250, "2.0.0", text)

    def reject_message(self, code=452, enhanced="4.3.1", text="Insufficient system storage"):
        """The message could not be kept: bytes of the reply to the final dot."""
        self._decide("message")
        return format_reply(code, enhanced, text)

    def accept_auth(self):
        """Credentials are good; bytes of the 235."""
        self._decide("auth")
        self.authenticated = self._auth
        self._auth = None
        return reply_bytes(replies.AUTH_OK)

    def reject_auth(self, code=535, enhanced="5.7.8", text="Authentication credentials invalid"):
        """Credentials are bad (535 5.7.8) or the user is locked out (454 4.7.0)."""
        self._decide("auth")
        self._auth = None
        return format_reply(code, enhanced, text)

    def tls_started(self):
        """The socket now speaks TLS: back to the pre-EHLO state (RFC 3207 4.2)."""
        if self.state != STARTTLS:
            raise UsageError("tls_started() without STARTTLS")
        self.tls = True
        self.helo_name = None
        self.esmtp = False
        self._reset_transaction()
        self._discard_input()
        self._set_state(CONNECTED, "TLS")

    def shutdown(self, code=421, enhanced="4.4.2", text="Idle timeout, closing connection"):
        """End the session from the I/O side (timeout, overload); bytes to write."""
        data = format_reply(code, enhanced, text)
        if self.state != CLOSED:
            self._events = []
            self._close("shutdown %d" % code)
        return data

    # --- commands ----------------------------------------------------------------
    def _take_line(self):
        """The next complete command line (without CRLF), or None; drains long lines."""
        buf, pos = self._buf, self._pos
        end = buf.find(b"\r\n", pos)
        if end < 0:
            if self._draining or len(buf) - pos >= self.max_command_line:
                self._draining = True
                keep = 1 if buf.endswith(b"\r") else 0
                self._buf, self._pos = buf[len(buf) - keep:], 0
            return None
        self._pos = end + 2
        if self._draining or end + 2 - pos > self.max_command_line:
            self._draining = False
            self._error(replies.LINE_TOO_LONG)
            return None
        return buf[pos:end]

    def _command_step(self):
        while not self._events and self.state not in (CLOSED, STARTTLS, DATA):
            if self._pending:
                return
            line = self._take_line()
            if line is None:
                if self._events or self._buf.find(b"\r\n", self._pos) >= 0:
                    continue
                return
            if self.state == AUTH:
                self._auth_line(line)
            else:
                self._command(line)

    def _command(self, line):
        if b"\x00" in line:
            return self._error(replies.NUL_IN_COMMAND)
        if b"\r" in line or b"\n" in line:
            return self._error(replies.BARE_NEWLINE_IN_COMMAND)
        space = line.find(b" ")
        verb = (line if space < 0 else line[:space]).upper()
        arg = b"" if space < 0 else line[space + 1:]
        entry = COMMANDS.get(verb)
        if entry is None:
            known = verb in UNIMPLEMENTED
            return self._error(replies.NOT_IMPLEMENTED if known else replies.UNKNOWN_COMMAND)
        check, act = entry
        refusal = check(self, arg)
        if refusal is not None:
            return self._error(refusal)
        act(self, verb.decode(), arg)

    def ehlo_keywords(self):
        """The EHLO extension lines for the current session."""
        size = "SIZE %d" % self.max_message_size if self.max_message_size else "SIZE"
        words = ["PIPELINING", size, "8BITMIME", "ENHANCEDSTATUSCODES"]
        if self.smtputf8:
            words.append("SMTPUTF8")
        if self.tls_available and not self.tls:
            words.append("STARTTLS")
        if self.auth_available and (self.tls or not self.auth_requires_tls):
            words.append("AUTH PLAIN LOGIN")
        return words

    # --- AUTH --------------------------------------------------------------------
    def _auth_line(self, line):
        mechanism, user = self._auth_progress
        if line == b"*":
            return self._auth_abort(replies.AUTH_CANCELLED)
        data = _b64decode(line)
        if data is None:
            return self._auth_abort(replies.AUTH_BAD_BASE64)
        self._auth_response(mechanism, user, data)

    def _auth_abort(self, reply):
        self._set_state(GREETED, "AUTH")
        self._error(reply)

    def _auth_response(self, mechanism, user, data):
        if mechanism == "PLAIN":
            return self._auth_plain(data)
        if user is None:
            name = _utf8(data)
            if name is None:
                return self._auth_abort(replies.AUTH_BAD_BASE64)
            return self._auth_prompt("LOGIN", name, _PROMPT_PASSWORD)
        password = _utf8(data)
        if password is None:
            return self._auth_abort(replies.AUTH_BAD_BASE64)
        self._auth_request("LOGIN", user, password, "")

    def _auth_plain(self, data):
        parts = data.split(b"\x00")
        fields = [_utf8(part) for part in parts]
        if len(parts) != 3 or None in fields:
            return self._auth_abort(replies.AUTH_BAD_BASE64)
        self._auth_request("PLAIN", fields[1], fields[2], fields[0])

    def _auth_prompt(self, mechanism, user, prompt):
        self._auth_progress = (mechanism, user)
        self._set_state(AUTH, "AUTH")
        self._emit(Reply(334, None, format_reply(334, None, prompt)))

    def _auth_request(self, mechanism, user, password, authzid):
        self._set_state(GREETED, "AUTH")
        self._auth = user
        self._pending = "auth"
        self._emit(AuthRequest(mechanism, user, password, authzid))

    # --- DATA --------------------------------------------------------------------
    def _start_data(self):
        self._line_start = True
        self._line_len = 0
        self._size = 0
        self._data_error = None

    def _data_fault(self, reply):
        if self._data_error is None:
            self._data_error = reply

    def _content(self, out, buf, start, end):
        count = end - start
        if count <= 0:
            return
        self._line_len += count
        if self._line_len + 2 > self.max_line:
            self._data_fault(replies.DATA_LINE_TOO_LONG)
        self._count(count)
        if self._data_error is None:
            out.append(buf[start:end])

    def _count(self, count):
        self._size += count
        if self.max_message_size and self._size > self.max_message_size:
            self._data_fault(replies.MESSAGE_TOO_BIG)

    def _newline(self, out, bare):
        self._line_len = 0
        if bare and self.bare_lf == BARE_LF_REJECT:
            self._data_fault(replies.BARE_NEWLINE)
            return
        self._line_start = not bare
        self._count(2)
        if self._data_error is None:
            out.append(b"\r\n")

    def _dot_at_line_start(self, buf, pos, end):
        """At a line start with '.': returns (new pos, finished), or None to wait."""
        if end - pos < 3 and b".\r\n".startswith(buf[pos:end]):
            return None
        if buf[pos + 1] == _CR and buf[pos + 2] == _LF:
            return pos + 3, True
        self._line_len += 1          # the stuffing dot counts towards the line length
        return pos + 1, False

    def _data_step(self):
        buf, pos, end = self._buf, self._pos, len(self._buf)
        out = []
        room = self.data_chunk
        next_cr = next_lf = -2
        finished = False
        while pos < end and room > 0:
            if self._line_start:
                self._line_start = False
                if buf[pos] == _DOT:
                    step = self._dot_at_line_start(buf, pos, end)
                    if step is None:
                        self._line_start = True
                        break
                    pos, finished = step
                    if finished:
                        break
                    continue
            if -1 < next_cr < pos or next_cr == -2:
                next_cr = buf.find(b"\r", pos)
            if -1 < next_lf < pos or next_lf == -2:
                next_lf = buf.find(b"\n", pos)
            stop = _first(next_cr, next_lf)
            if stop < 0 or stop - pos >= room:
                take = min(end, pos + room)
                self._content(out, buf, pos, take)
                room -= take - pos
                pos = take
                continue
            self._content(out, buf, pos, stop)
            room -= stop - pos + 2
            if buf[stop] == _LF:
                pos = stop + 1
                self._newline(out, True)
            elif stop + 1 >= end:
                pos = stop
                break
            elif buf[stop + 1] == _LF:
                pos = stop + 2
                self._newline(out, False)
            else:
                pos = stop + 1
                self._newline(out, True)
        self._pos = pos
        if out:
            self._emit(DataChunk(b"".join(out)))
        if finished:
            self._finish_data()

    def _finish_data(self):
        self._set_state(GREETED, "end of data")
        error = self._data_error
        self._emit(DataEnd(error is None, error, self._size))
        self._reset_transaction()
        if error is None:
            self._pending = "message"
        else:
            self._reply(error)


def _first(a, b):
    if a < 0:
        return b
    if b < 0:
        return a
    return a if a < b else b


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
    if not name or len(name) > MAX_HELO_NAME:
        return None
    for byte in name:
        if byte <= 32 or byte >= 127:
            return None
    return name.decode()


def _do_helo(conn, verb, arg):
    name = _helo_name(arg)
    if name is None:
        return conn._error(replies.HELO_SYNTAX)
    conn._reset_transaction()
    conn.helo_name = name
    conn.esmtp = verb == "EHLO"
    conn._set_state(GREETED, verb)
    conn._emit(Helo(name, conn.esmtp))
    if conn.esmtp:
        data = format_reply(250, None, [conn.hostname] + conn.ehlo_keywords())
    else:
        data = format_reply(250, None, conn.hostname)
    conn._emit(Reply(250, None, data))


def _prefixed(arg, prefix):
    """The part of `arg` after the case-insensitive `prefix` (FROM:/TO:), or None."""
    if arg[:len(prefix)].upper() != prefix:
        return None
    return arg[len(prefix):]


def _mail_params(params, smtputf8_offered):
    """Validate MAIL parameters -> (size, body, smtputf8); raises AddressError."""
    size = body = None
    for key in params:
        value = params[key]
        if key == "SIZE":
            if not value or len(value) > MAX_SIZE_DIGITS or not value.isdigit():
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
    rest = _prefixed(arg, b"FROM:")
    if rest is None:
        return conn._error(replies.MAIL_SYNTAX)
    try:
        path, raw_params = address.split_path(rest)
        params = address.parse_params(raw_params)
        size, body, utf8 = _mail_params(params, conn.smtputf8)
        mailbox = address.parse_path(path, sender=True, smtputf8=utf8)
    except address.AddressError as exc:
        return conn._error(exc.reply, exc.detail)
    if size is not None and conn.max_message_size and size > conn.max_message_size:
        return conn._reply(replies.MESSAGE_TOO_BIG)
    conn._offered = MailFrom(mailbox, params, size, body, utf8)
    conn._pending = "mail"
    conn._emit(conn._offered)


def _do_rcpt(conn, verb, arg):
    rest = _prefixed(arg, b"TO:")
    if rest is None:
        return conn._error(replies.RCPT_SYNTAX)
    try:
        path, raw_params = address.split_path(rest)
        params = address.parse_params(raw_params)
        if params:
            raise address.AddressError(replies.UNKNOWN_PARAMETER)
        mailbox = address.parse_path(path, smtputf8=conn.mail.smtputf8, allow_postmaster=True)
    except address.AddressError as exc:
        return conn._error(exc.reply, exc.detail)
    if conn.max_recipients and conn.recipients >= conn.max_recipients:
        return conn._reply(replies.TOO_MANY_RECIPIENTS)
    conn._pending = "rcpt"
    conn._emit(RcptTo(mailbox, params))


def _do_data(conn, verb, arg):
    conn._pending = "data"
    conn._emit(DataStart())


def _do_rset(conn, verb, arg):
    conn._reset_transaction()
    if conn.state != CONNECTED:
        conn._set_state(GREETED, verb)
    conn._emit(Rset())
    conn._reply(replies.RESET_OK)


def _do_noop(conn, verb, arg):
    conn._reply(replies.OK)


def _do_help(conn, verb, arg):
    conn._reply(replies.HELP)


def _do_vrfy(conn, verb, arg):
    if not arg.strip():
        return conn._error(replies.VRFY_SYNTAX)
    conn._reply(replies.VRFY_CANNOT)


def _do_quit(conn, verb, arg):
    conn._emit(Quit())
    conn._reply(replies.BYE)
    conn._close("quit")


def _do_starttls(conn, verb, arg):
    conn._reply(replies.READY_TLS)
    conn._discard_input()            # plaintext pipelined after STARTTLS: never a command
    conn._set_state(STARTTLS, verb)
    conn._emit(StartTLS())


def _do_auth(conn, verb, arg):
    words = arg.split()
    if not words or len(words) > 2:
        return conn._error(replies.SYNTAX_ERROR)
    mechanism = words[0].upper().decode()
    if mechanism not in ("PLAIN", "LOGIN"):
        return conn._error(replies.AUTH_UNKNOWN_MECHANISM)
    if len(words) == 1:
        prompt = "" if mechanism == "PLAIN" else _PROMPT_USER
        return conn._auth_prompt(mechanism, None, prompt)
    conn._auth_progress = (mechanism, None)
    conn._auth_line(words[1])


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

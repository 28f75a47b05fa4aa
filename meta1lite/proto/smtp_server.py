# meta1lite/proto/smtp_server.py - sans-I/O SMTP server core (RFC 5321 with
# PIPELINING RFC 2920, SIZE RFC 1870, 8BITMIME RFC 6152, ENHANCEDSTATUSCODES RFC
# 2034/3463, STARTTLS RFC 3207, AUTH PLAIN/LOGIN RFC 4954, SMTPUTF8 RFC 6531).
#
# Owns: the session (ServerConnection): the input buffer, command-line framing
# (bounded; over-long lines are drained, never held), the event queue, the
# decision methods of the I/O layer, the replies the protocol alone decides, and
# the EHLO list. The states, their transition table, the command table of
# (check, act) pairs and the AUTH exchange are in server_states; DATA framing in
# server_data; the events in events; this module re-exports what the I/O layer
# uses. ONE method, _set_state (events.StateMachine), changes the state: it checks
# the move against server_states.TRANSITIONS and, with state_events, records a
# StateChange event.
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
# usable. DataChunk bytes are unstuffed, CRLF-only, at most DATA_CHUNK + 2 octets,
# and valid only until the next receive_data(): the input is kept in one bytearray
# that is reused (no allocation per read on a board's fragmented heap), and a chunk
# that is all of it is that bytearray itself. Copy what must outlive the call.
#
# Use (the I/O layer):
#     conn = ServerConnection("relay.example", max_message_size=10485760, ...)
#     write(conn.greeting())
#     loop: ev = conn.next_event()
#       NEED_DATA  -> write what was collected; conn.receive_data(read(<= _READ_MAX))
#                     (b"" on EOF)
#       PAUSED     -> a decision is due (or STARTTLS is under way): see below
#       Reply      -> write ev.data (replies are in order; batch until NEED_DATA)
#       MailFrom   -> write conn.accept_mail() or conn.reject_mail(replies.QUEUE_FULL)
#       RcptTo     -> write conn.accept_rcpt() or conn.reject_rcpt(replies.RELAY_DENIED)
#       DataStart  -> open a spool file; write conn.accept_data() (354) or reject_data
#       DataChunk  -> append ev.data to the spool file as-is (before the next read)
#       DataEnd    -> ok: commit durably, then write conn.accept_message(...) (250);
#                     not ok: discard the file (the core's Reply with the 5xx follows)
#       AuthRequest-> check; write conn.accept_auth() or conn.reject_auth(...)
#       StartTLS   -> write the pending 220 first, upgrade the socket, conn.tls_started()
#       Helo, Rset -> drop any transaction in progress; Quit -> log
#       StateChange-> log (only with state_events=True, the default)
#       Close      -> close the socket (after writing what was collected)
# The I/O layer may end a session itself with conn.shutdown(replies.IDLE_TIMEOUT).
import builtins

from meta1lite.const import const
from meta1lite.proto import replies
from meta1lite.proto.events import (  # noqa: F401 - re-exported: the core's API
    NEED_DATA,
    PAUSED,
    AuthRequest,
    Close,
    DataChunk,
    DataEnd,
    DataStart,
    Helo,
    MailFrom,
    Quit,
    RcptTo,
    Reply,
    Rset,
    StartTLS,
    StateChange,
    StateMachine,
)
from meta1lite.proto.replies import format_reply, parts, reply_bytes
from meta1lite.proto.server_data import BARE_LF_MODES, BARE_LF_REJECT, DataReader
from meta1lite.proto.server_states import (  # noqa: F401 - the states re-exported
    AUTH,
    CLOSED,
    COMMANDS,
    CONNECTED,
    DATA,
    GREETED,
    MAIL,
    RCPT,
    STARTTLS,
    TRANSITIONS,
    UNIMPLEMENTED,
    auth_line,
)

# --- limits -------------------------------------------------------------------
_MAX_COMMAND_LINE = const(512)  # octets incl. CRLF, RFC 5321 section 4.5.3.1.4
_MAX_DATA_LINE = const(1000)   # octets incl. CRLF, section 4.5.3.1.6
DATA_CHUNK = const(4096)       # octets of message per DataChunk event
_MAX_BUFFER = const(16384)     # unprocessed input octets; read at most _READ_MAX at a time
_READ_MAX = const(_MAX_BUFFER - _MAX_COMMAND_LINE)
# At DATA the input buffer is made a read (data_chunk) plus this, once a message:
# bytes left over from the last read (a cut line end) then never make it grow by a
# few octets, which on a board's fragmented heap is a new 1K+ block ("allocating
# 1025 bytes"); outside DATA it is as small as the commands (an idle session holds
# no DATA buffer: it is given back at the end of the message).
BUFFER_SLACK = const(64)
_MAX_BAD_COMMANDS = const(10)  # errors before 421 4.7.0 and close
_MAX_JUNK_COMMANDS = const(100)  # NOOP/RSET/VRFY/HELP per message before 421 4.7.0 (Postfix's
                               # smtpd_junk_command_limit); 0: no limit


# A DataChunk may be a view of the input buffer (valid until the next receive_data);
# CPython refuses to resize a bytearray while a view of it lives (BufferError), and a
# caller may keep the event: the buffer is then replaced. MicroPython has no such check.
_BUFFER_ERRORS = getattr(builtins, "BufferError", ())


def _empty_buffer(capacity):
    # an empty bytearray that takes `capacity` octets without being reallocated
    buf = bytearray(capacity)
    buf[:] = b""
    return buf


class UsageError(Exception):
    """The I/O layer called the core out of turn (a bug, never the client's doing)."""


class ServerConnection(StateMachine):
    """One SMTP session's protocol state, sans I/O (see the module header).

    state_events: queue a StateChange event at every change of state (the I/O
    layer turns it off unless it logs them)."""
    TRANSITIONS = TRANSITIONS
    STATE_ERROR = UsageError

    def __init__(self, hostname, max_message_size=0, max_recipients=100,
                 max_line=_MAX_DATA_LINE, max_command_line=_MAX_COMMAND_LINE,
                 max_bad_commands=_MAX_BAD_COMMANDS, tls_available=False, tls_active=False,
                 auth_available=False, auth_requires_tls=True, bare_lf=BARE_LF_REJECT,
                 smtputf8=True, max_buffer=_MAX_BUFFER, data_chunk=DATA_CHUNK,
                 state_events=True, max_junk_commands=_MAX_JUNK_COMMANDS):
        if bare_lf not in BARE_LF_MODES:
            raise ValueError("bare_lf must be 'reject' or 'normalize'")
        StateMachine.__init__(self, CONNECTED, state_events)
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
        self.helo_name = None
        self.esmtp = False
        self.authenticated = None
        self.bad_commands = 0
        self.max_junk_commands = max_junk_commands
        self.junk_commands = 0          # since the session began or the last message
        self.closed_from = None         # the state the session closed from
        self._buf = bytearray()         # input not yet processed starts at _pos
        self._pos = 0
        self._roomy = False             # _buf was given room for DATA reads
        self._eof = False
        self._draining = False          # an over-long command line is being skipped
        self._data = None               # the DataReader of the message being read
        self._pending = None
        self._closed_event = None
        self._auth = None
        self._auth_progress = None      # (mechanism, user so far) of an AUTH exchange
        self._reset_transaction()

    # --- bookkeeping ---------------------------------------------------------
    def _reset_transaction(self):
        self.mail = None
        self.recipients = 0
        self._offered = None

    def _reply(self, reply, text=None):
        code, enhanced, default = parts(reply)
        self._emit(Reply(code, enhanced, format_reply(code, enhanced, text or default)))

    def _error(self, reply, text=None):
        self._reply(reply, text)
        self._count_error()

    def _count_error(self):
        # a bad command or a refused recipient (Postfix's smtpd_hard_error_limit);
        # counted until a message is accepted
        self.bad_commands += 1
        if self.max_bad_commands and self.bad_commands >= self.max_bad_commands:
            self._reply(replies.TOO_MANY_ERRORS)
            self._close("too many errors")

    def _junk(self):
        # count a command that does nothing; True if it ended the session
        self.junk_commands += 1
        if self.max_junk_commands and self.junk_commands > self.max_junk_commands:
            self._reply(replies.TOO_MANY_JUNK)
            self._close("too many junk commands")
            return True
        return False

    def _close(self, reason):
        self._discard_input()
        self._pending = None
        self.closed_from = self.state       # for the I/O side's log lines
        self._set_state(CLOSED, reason)
        self._closed_event = Close(reason)
        self._emit(self._closed_event)

    def _discard_input(self):
        self._buf = bytearray()
        self._pos = 0
        self._roomy = False

    def _shrink_input(self):
        # the DATA buffer back to what is left in it (commands pipelined behind the
        # dot); a DataChunk still held keeps the old one
        if self._roomy:
            self._buf = bytearray(memoryview(self._buf)[self._pos:])
            self._pos = 0
            self._roomy = False

    def make_room_for_data(self):
        """Allocate the input buffer DATA reads into (a read plus BUFFER_SLACK), kept
        to the end of the message; accept_data() does it if the I/O layer has not,
        which may first check that the heap has room (MemoryError). An idle
        session's buffer is as small as its commands."""
        if self._roomy:
            return
        buf = _empty_buffer(self.data_chunk + BUFFER_SLACK)
        buf.extend(memoryview(self._buf)[self._pos:])
        self._buf, self._pos, self._roomy = buf, 0, True

    # --- the h11-style surface -------------------------------------------------
    def greeting(self):
        """Bytes of the 220 greeting (no enhanced code, RFC 2034 section 3)."""
        return format_reply(220, None, "%s ESMTP meta1lite" % self.hostname)

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
        try:
            self._append_input(data)
        except _BUFFER_ERRORS:      # CPython: a DataChunk view of it is still held
            self._buf = bytearray(self._buf)    # the view keeps the old one
            self._append_input(data)

    def _append_input(self, data):
        if self._pos:
            self._buf[:self._pos] = b""     # in place: the bytearray keeps its size
            self._pos = 0
        self._buf.extend(data)

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

    def reject_mail(self, reply=replies.QUEUE_FULL):
        """Refuse the MailFrom (e.g. queue full); bytes of the reply."""
        self._decide("mail")
        self._offered = None
        return reply_bytes(reply)

    def accept_rcpt(self, text=None):
        """Accept the RcptTo just returned; bytes of the 250."""
        self._decide("rcpt")
        self.recipients += 1
        self._set_state(RCPT, "RCPT")
        return reply_bytes(replies.RECIPIENT_OK, text)

    def reject_rcpt(self, reply=replies.RELAY_DENIED):
        """Refuse the RcptTo (554 5.7.1 relay denied, 550 5.1.1 unknown...)."""
        self._decide("rcpt")
        out = reply_bytes(reply)
        self._count_error()         # a relay probe or a guess at local names ends
        return out

    def accept_data(self):
        """Start reading the message; bytes of the 354."""
        self._decide("data")
        self._data = DataReader(self.max_line, self.max_message_size, self.bare_lf,
                                self.data_chunk)
        self.make_room_for_data()
        self._set_state(DATA, "DATA")
        return reply_bytes(replies.START_DATA)

    def reject_data(self, reply=replies.QUEUE_FULL):
        """Refuse DATA before the 354; the transaction stays open."""
        self._decide("data")
        return reply_bytes(reply)

    def accept_message(self, text=None):
        """The message is durable: bytes of the 250 to the final dot."""
        self._decide("message")
        self.junk_commands = 0          # a client that sends mail is no slowloris
        self.bad_commands = 0
        return reply_bytes(replies.MESSAGE_OK, text)

    def reject_message(self, reply=replies.QUEUE_FULL):
        """The message could not be kept: bytes of the reply to the final dot."""
        self._decide("message")
        return reply_bytes(reply)

    def accept_auth(self):
        """Credentials are good; bytes of the 235."""
        self._decide("auth")
        self.authenticated = self._auth
        self._auth = None
        return reply_bytes(replies.AUTH_OK)

    def reject_auth(self, reply=replies.AUTH_INVALID):
        """Credentials are bad (535 5.7.8) or the user is locked out (454 4.7.0)."""
        self._decide("auth")
        self._auth = None
        return reply_bytes(reply)

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

    def shutdown(self, reply=replies.IDLE_TIMEOUT):
        """End the session from the I/O side (timeout, overload) with `reply` (of
        proto/replies.py's table); bytes to write."""
        data = reply_bytes(reply)
        if self.state != CLOSED:
            self._events = []
            self._close("shutdown %s" % reply[:3])
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
                buf[:len(buf) - keep] = b""
                self._pos = 0
            return None
        self._pos = end + 2
        if self._draining or end + 2 - pos > self.max_command_line:
            self._draining = False
            self._error(replies.LINE_TOO_LONG)
            return None
        return bytes(memoryview(buf)[pos:end])

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
                auth_line(self, line)
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

    # --- DATA --------------------------------------------------------------------
    def _data_step(self):
        reader = self._data
        chunk = reader.read(self._buf, self._pos)
        self._pos = reader.pos
        if chunk:
            self._emit(DataChunk(chunk))
        if reader.finished:
            self._finish_data()

    def _finish_data(self):
        reader, self._data = self._data, None
        self._shrink_input()
        self._set_state(GREETED, "end of data")
        error = reader.error
        self._emit(DataEnd(error is None, error, reader.size))
        self._reset_transaction()
        if error is None:
            self._pending = "message"
        else:
            self._reply(error)

# meta1lite/proto/replies.py - SMTP replies both ways: the table of every reply
# meta1lite makes, each one string "code enhanced text" (a tuple in a .mpy is loaded
# as a tuple plus a str per element: twice the unix port's heap for this table), and
# the one function that formats replies into bytes (the server core); ReplyReader,
# which gathers what a server says into whole replies, bounded, with RFC 3463
# enhanced codes split off (the client core).
# Owns: reply wording and RFC 3463 enhanced codes (docs/design.md's replies table), and
# the reply syntax of RFC 5321 section 4.2. Must never: decide policy or what a
# reply means for a session (the caller's business), emit a line without CRLF or
# a bare CR/LF inside a line, raise on anything a server sends, or hold more than
# MAX_REPLY_LINE octets of an unfinished line.
# Enhanced codes are left out only where RFC 2034 section 3 / RFC 4954 say so: the
# greeting, the EHLO/HELO replies and 334 challenges (enhanced=None).
# Runs on MicroPython and CPython.
from meta1lite.const import const

MAX_REPLY_LINE = const(1024)   # octets per reply line (RFC 5321 says 512; be lenient)
MAX_REPLY_LINES = const(64)    # lines per multi-line reply (EHLO lists ~15)

# --- success -----------------------------------------------------------------
OK = "250 2.0.0 OK"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
MESSAGE_OK = "250 2.0.0 OK: queued"
RESET_OK = "250 2.0.0 Reset OK"
BYE = "221 2.0.0 Bye"
START_DATA = "354 2.0.0 End data with <CR><LF>.<CR><LF>"
READY_TLS = "220 2.0.0 Ready to start TLS"
AUTH_OK = "235 2.7.0 Authentication successful"
VRFY_CANNOT = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
HELP = "214 2.0.0 See RFC 5321; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
# HELP adds " STARTTLS" and " AUTH" only where the session offers them

# --- temporary failures --------------------------------------------------------
QUEUE_FULL = "452 4.3.1 Insufficient system storage"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_CLIENT = "421 4.7.0 Too many connections from your address"
RATE_LIMITED = "450 4.7.1 Too much mail from %s, slow down"     # % the client's address
IDLE_TIMEOUT = "421 4.4.2 Idle timeout, closing connection"
COMMAND_TIMEOUT = "421 4.4.2 Command timeout, closing connection"
DATA_TOO_SLOW = "421 4.4.2 Data rate too low, closing connection"
TOO_MANY_JUNK = "421 4.7.0 Too many commands that do nothing, closing connection"
EVICTED = "421 4.7.0 Server full: closing the idlest connection"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing connection"
LOW_MEMORY = "421 4.3.2 System resources low, try again later"   # MicroPython heap
OUT_OF_MEMORY = "421 4.3.0 Out of memory, closing connection"     # a MemoryError in a session
AUTH_LOCKED = "454 4.7.0 Too many authentication failures, try again later"
TEMP_FAILURE = "451 4.3.0 Local error, try again later"

# --- permanent failures: commands ---------------------------------------------
UNKNOWN_COMMAND = "500 5.5.2 Command unrecognized"
LINE_TOO_LONG = "500 5.5.2 Line too long"
NUL_IN_COMMAND = "500 5.5.2 NUL character in command"
BARE_NEWLINE_IN_COMMAND = "500 5.5.2 Bare CR or LF in command"
NOT_IMPLEMENTED = "502 5.5.1 Command not implemented"
BAD_SEQUENCE = "503 5.5.1 Bad sequence of commands"
NEED_HELO = "503 5.5.1 Send EHLO or HELO first"
NEED_MAIL = "503 5.5.1 Need MAIL before RCPT"
NESTED_MAIL = "503 5.5.1 Sender already specified"
NEED_RCPT = "503 5.5.1 Need MAIL and RCPT before DATA"
NO_VALID_RECIPIENTS = "554 5.5.1 No valid recipients"
SYNTAX_ERROR = "501 5.5.4 Syntax error in parameters or arguments"
HELO_SYNTAX = "501 5.5.4 Syntax: EHLO hostname"
MAIL_SYNTAX = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
RCPT_SYNTAX = "501 5.5.4 Syntax: RCPT TO:<address> [parameters]"
VRFY_SYNTAX = "501 5.5.4 Syntax: VRFY address"
NO_ARGUMENTS = "501 5.5.4 No arguments allowed"
UNKNOWN_PARAMETER = "555 5.5.4 Unsupported parameter"
BAD_PARAMETER = "501 5.5.4 Invalid parameter syntax"
DUPLICATE_PARAMETER = "501 5.5.4 Duplicate parameter"
TOO_MANY_PARAMETERS = "501 5.5.4 Too many parameters"
MESSAGE_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
QUEUE_TOO_SMALL = "552 5.3.4 Message too big for this system's queue"
ALREADY_TLS = "503 5.5.1 TLS already active"

# --- permanent failures: addresses ---------------------------------------------
BAD_SENDER_SYNTAX = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT_SYNTAX = "501 5.1.3 Bad recipient address syntax"
PATH_TOO_LONG = "501 5.1.3 Path too long"
LOCAL_PART_TOO_LONG = "501 5.1.3 Local part too long"
DOMAIN_TOO_LONG = "501 5.1.3 Domain too long"
NEED_SMTPUTF8 = "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter"
BAD_UTF8 = "553 5.6.7 Address is not valid UTF-8"
RELAY_DENIED = "554 5.7.1 Relay access denied"
UNKNOWN_USER = "550 5.1.1 User unknown"

# --- permanent failures: DATA --------------------------------------------------
DATA_LINE_TOO_LONG = "500 5.5.2 Line in message exceeds 1000 octets"
BARE_NEWLINE = "550 5.5.2 Message contains bare CR or LF (SMTP smuggling protection)"

# --- AUTH (RFC 4954) -------------------------------------------------------------
AUTH_NOT_AVAILABLE = "502 5.5.1 AUTH not available"
AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_UNKNOWN_MECHANISM = "504 5.5.4 Unrecognized authentication mechanism"
AUTH_CANCELLED = "501 5.0.0 Authentication cancelled"
AUTH_BAD_BASE64 = "501 5.5.2 Cannot decode response"
AUTH_ALREADY = "503 5.5.1 Already authenticated"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"

CRLF = b"\r\n"


def _clean(text):
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return text.replace("\r", " ").replace("\n", " ")


def format_reply(code, enhanced, text):
    """Bytes of one reply: `text` is a str or a list of lines (multi-line reply,
    `code-` on all but the last); `enhanced` (e.g. "2.0.0") prefixes each line
    unless None."""
    lines = text if isinstance(text, (list, tuple)) else [text]
    if not lines:
        lines = [""]
    out = []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        sep = " " if i == last else "-"
        line = _clean(line)
        if enhanced:
            line = "%s %s" % (enhanced, line) if line else enhanced
        out.append(("%d%s%s" % (code, sep, line)).encode("utf-8"))
    return CRLF.join(out) + CRLF


def parts(reply):
    """(code, enhanced, text) of a reply of this table."""
    code, enhanced, text = reply.split(" ", 2)
    return int(code), enhanced, text


def reply_bytes(reply, text=None):
    """Bytes of a reply of this table, optionally with other text."""
    if text is None:
        return (reply + "\r\n").encode()
    code, enhanced, _ = parts(reply)
    return format_reply(code, enhanced, text)


# --- reading a server's replies (the client core) ------------------------------
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


class ReplyReader:
    """Bytes from the server in, whole replies out (next_reply). After garbage,
    .error says what was wrong and no reply comes any more."""

    def __init__(self):
        self._rx = b""
        self._pos = 0
        self._lines = []                 # lines of a multi-line reply so far
        self._code = 0
        self.error = None

    def feed(self, data):
        """Add bytes read from the server."""
        if self._pos:
            self._rx = self._rx[self._pos:] + bytes(data)
            self._pos = 0
        else:
            self._rx += bytes(data)

    def discard(self):
        """Forget everything received and not yet taken (STARTTLS response injection)."""
        self._rx = b""
        self._pos = 0
        self._lines = []

    def next_reply(self):
        """The next complete Reply, or None (more bytes are due, or .error is set)."""
        while self.error is None:
            end = self._rx.find(b"\n", self._pos)
            if end < 0:
                if len(self._rx) - self._pos > MAX_REPLY_LINE:
                    self.error = "reply line longer than %d octets" % MAX_REPLY_LINE
                return None
            raw = self._rx[self._pos:end]
            self._pos = end + 1
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if self._add_line(raw):
                return self._finish()
        return None

    def _add_line(self, raw):
        """True when `raw` was the last line of a reply; sets .error on garbage."""
        parsed = parse_reply_line(raw) if len(raw) <= MAX_REPLY_LINE else None
        if parsed is None:
            self.error = "malformed reply line %r" % raw[:80]
        elif self._lines and parsed[0] != self._code:
            self.error = "reply code changed from %d to %d" % (self._code, parsed[0])
        elif len(self._lines) >= MAX_REPLY_LINES:
            self.error = "reply longer than %d lines" % MAX_REPLY_LINES
        else:
            self._code = parsed[0]
            self._lines.append(parsed[2])
            return parsed[1]
        return False

    def _finish(self):
        code, lines, enhanced = self._code, [], None
        for line in self._lines:
            enh, rest = split_enhanced(code, line)
            if enh is not None and enhanced is None:
                enhanced = enh
            lines.append(rest if enh is not None else line)
        self._lines = []
        return Reply(code, enhanced, lines)


def _text(raw):
    try:
        return raw.decode()
    except UnicodeError:
        return "".join(chr(b) if b < 128 else "?" for b in raw)


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

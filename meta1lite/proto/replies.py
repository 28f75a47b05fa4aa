# meta1lite/proto/replies.py - the SMTP reply table shared by the server core (and
# later the client): every reply meta1lite makes, as (code, enhanced, text), and
# the one function that formats replies into bytes.
# Owns: reply wording and RFC 3463 enhanced codes (design.md's replies table).
# Must never: decide policy (which reply applies is the caller's business), or emit
# a line without CRLF, or a bare CR/LF inside a line.
# Enhanced codes are left out only where RFC 2034 section 3 / RFC 4954 say so: the
# greeting, the EHLO/HELO replies and 334 challenges (enhanced=None).
# Runs on MicroPython and CPython.

# --- success -----------------------------------------------------------------
OK = (250, "2.0.0", "OK")
SENDER_OK = (250, "2.1.0", "Sender OK")
RECIPIENT_OK = (250, "2.1.5", "Recipient OK")
MESSAGE_OK = (250, "2.0.0", "OK: queued")
RESET_OK = (250, "2.0.0", "Reset OK")
BYE = (221, "2.0.0", "Bye")
START_DATA = (354, "2.0.0", "End data with <CR><LF>.<CR><LF>")
READY_TLS = (220, "2.0.0", "Ready to start TLS")
AUTH_OK = (235, "2.7.0", "Authentication successful")
VRFY_CANNOT = (252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = (214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH")

# --- temporary failures --------------------------------------------------------
QUEUE_FULL = (452, "4.3.1", "Insufficient system storage")
TOO_MANY_RECIPIENTS = (452, "4.5.3", "Too many recipients")
TOO_MANY_ERRORS = (421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_CONNECTIONS = (421, "4.7.0", "Too many connections, try again later")
IDLE_TIMEOUT = (421, "4.4.2", "Idle timeout, closing connection")
SHUTTING_DOWN = (421, "4.3.2", "Service shutting down, closing connection")
AUTH_LOCKED = (454, "4.7.0", "Too many authentication failures, try again later")
TEMP_FAILURE = (451, "4.3.0", "Local error, try again later")

# --- permanent failures: commands ---------------------------------------------
UNKNOWN_COMMAND = (500, "5.5.2", "Command unrecognized")
LINE_TOO_LONG = (500, "5.5.2", "Line too long")
NUL_IN_COMMAND = (500, "5.5.2", "NUL character in command")
BARE_NEWLINE_IN_COMMAND = (500, "5.5.2", "Bare CR or LF in command")
NOT_IMPLEMENTED = (502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = (503, "5.5.1", "Bad sequence of commands")
NEED_HELO = (503, "5.5.1", "Send EHLO or HELO first")
NEED_MAIL = (503, "5.5.1", "Need MAIL before RCPT")
NESTED_MAIL = (503, "5.5.1", "Sender already specified")
NEED_RCPT = (503, "5.5.1", "Need MAIL and RCPT before DATA")
NO_VALID_RECIPIENTS = (554, "5.5.1", "No valid recipients")
SYNTAX_ERROR = (501, "5.5.4", "Syntax error in parameters or arguments")
HELO_SYNTAX = (501, "5.5.4", "Syntax: EHLO hostname")
MAIL_SYNTAX = (501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
RCPT_SYNTAX = (501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
VRFY_SYNTAX = (501, "5.5.4", "Syntax: VRFY address")
NO_ARGUMENTS = (501, "5.5.4", "No arguments allowed")
UNKNOWN_PARAMETER = (555, "5.5.4", "Unsupported parameter")
BAD_PARAMETER = (501, "5.5.4", "Invalid parameter syntax")
DUPLICATE_PARAMETER = (501, "5.5.4", "Duplicate parameter")
TOO_MANY_PARAMETERS = (501, "5.5.4", "Too many parameters")
MESSAGE_TOO_BIG = (552, "5.3.4", "Message size exceeds fixed maximum message size")
ALREADY_TLS = (503, "5.5.1", "TLS already active")

# --- permanent failures: addresses ---------------------------------------------
BAD_SENDER_SYNTAX = (501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = (501, "5.1.3", "Bad recipient address syntax")
PATH_TOO_LONG = (501, "5.1.3", "Path too long")
LOCAL_PART_TOO_LONG = (501, "5.1.3", "Local part too long")
DOMAIN_TOO_LONG = (501, "5.1.3", "Domain too long")
NEED_SMTPUTF8 = (553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
BAD_UTF8 = (553, "5.6.7", "Address is not valid UTF-8")
RELAY_DENIED = (554, "5.7.1", "Relay access denied")
UNKNOWN_USER = (550, "5.1.1", "User unknown")
ROUTE_REFUSED = (554, "5.7.1", "Source routes are not accepted")

# --- permanent failures: DATA --------------------------------------------------
DATA_LINE_TOO_LONG = (500, "5.5.2", "Line in message exceeds 1000 octets")
BARE_NEWLINE = (550, "5.5.2", "Message contains bare CR or LF (SMTP smuggling protection)")

# --- AUTH (RFC 4954) -------------------------------------------------------------
AUTH_NOT_AVAILABLE = (502, "5.5.1", "AUTH not available")
AUTH_NEEDS_TLS = (538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_UNKNOWN_MECHANISM = (504, "5.5.4", "Unrecognized authentication mechanism")
AUTH_CANCELLED = (501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64 = (501, "5.5.2", "Cannot decode response")
AUTH_ALREADY = (503, "5.5.1", "Already authenticated")
AUTH_FAILED = (535, "5.7.8", "Authentication credentials invalid")

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


def reply_bytes(reply, text=None):
    """format_reply for a (code, enhanced, text) tuple of this table, optionally
    with other text."""
    code, enhanced, default = reply
    return format_reply(code, enhanced, default if text is None else text)

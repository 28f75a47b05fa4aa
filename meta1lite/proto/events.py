# meta1lite/proto/events.py - what the two SMTP cores hand to their I/O layers:
# the Event base and its repr, the NEED_DATA and PAUSED sentinels, StateChange,
# StateMachine (whose _set_state is the one place a core's state changes: checked
# against the core's transition table, recorded on demand), and every event of
# the server core (smtp_server) and the client core (smtp_client, with the
# RecipientResult its TransactionResult carries); each core re-exports its own.
# Owns: the event idiom (plain classes, fields set in __init__, a repr of the
# fields but those an event lists in _hidden) and each event's fields. Must never:
# decide anything (the cores create the events), touch I/O, or show a password
# (in clear or in base64) or message bytes in a repr.
# Runs on MicroPython and CPython.


class Sentinel:
    """A named marker next_event() returns instead of an event (compare with `is`)."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


NEED_DATA = Sentinel("NEED_DATA")   # feed receive_data() first
PAUSED = Sentinel("PAUSED")         # a decision of the I/O layer is due (server core)


class Event:
    """Base of every event; the repr shows its attributes but those in _hidden
    (an event with a secret or message bytes must list them there)."""
    _hidden = ()

    def __repr__(self):
        parts = ["%s=%r" % item for item in sorted(self.__dict__.items())
                 if item[0] not in self._hidden]
        return "%s(%s)" % (type(self).__name__, ", ".join(parts))


class StateChange(Event):
    """The core went from state `old` to `new` because of `cause` (for logs)."""

    def __init__(self, old, new, cause):
        self.old = old
        self.new = new
        self.cause = cause


class StateMachine:
    """Base of both cores: `state`, the queue of events, and _set_state.

    A core sets TRANSITIONS ({state: (states it may go to)}) and STATE_ERROR (its
    usage error). With state_events, every change is queued as a StateChange;
    without, a change allocates nothing."""
    TRANSITIONS = {}
    STATE_ERROR = Exception

    def __init__(self, state, state_events):
        self.state = state
        self.state_events = state_events
        self._events = []

    def _set_state(self, new, cause):
        old = self.state
        if new == old:
            return
        if new not in self.TRANSITIONS[old]:
            raise self.STATE_ERROR("state %s -> %s (%s) is not allowed" % (old, new, cause))
        self.state = new
        if self.state_events:
            self._events.append(StateChange(old, new, cause))

    def _emit(self, event):
        self._events.append(event)


# --- the server core's events (smtp_server) -----------------------------------
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
    """Unstuffed, CRLF-only message bytes (not in the repr); bytes-like, valid until
    the next receive_data() (it may be the core's input buffer or a view of it)."""
    _hidden = ("data",)

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
    """Credentials to check; the password is never in the repr."""
    _hidden = ("password",)

    def __init__(self, mechanism, user, password, authzid=""):
        self.mechanism = mechanism
        self.user = user
        self.password = password
        self.authzid = authzid


class Rset(Event):
    pass


class Quit(Event):
    pass


class Close(Event):
    def __init__(self, reason):
        self.reason = reason


# --- the client core's events (smtp_client) -----------------------------------
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
    def __init__(self, code, enhanced, text):
        self.code = code
        self.enhanced = enhanced
        self.text = text


class NeedTLS(Event):
    pass


class Authenticated(Event):
    def __init__(self, mechanism):
        self.mechanism = mechanism


class Ready(Event):
    pass


class ReadyForBody(Event):
    def __init__(self, message_token):
        self.message_token = message_token


class RecipientResult:
    """The verdict on one recipient: status is meta1lite.status SENT, DEFERRED or
    BOUNCED; code is the server's reply code, or LOCAL_CODE when the client decided."""

    def __init__(self, rcpt, code, enhanced, text, status):
        self.rcpt = rcpt
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.status = status

    # it reads (indexes, unpacks, compares) as the tuple (rcpt, code, enhanced, text,
    # status) it used to be: the core's tests still do
    def __getitem__(self, index):
        return (self.rcpt, self.code, self.enhanced, self.text, self.status)[index]

    def __eq__(self, other):
        return isinstance(other, (tuple, RecipientResult)) and tuple(self) == tuple(other)

    def __repr__(self):
        return "RecipientResult%r" % (tuple(self),)


class TransactionResult(Event):
    """results: a RecipientResult per recipient, in the order given."""

    def __init__(self, message_token, results):
        self.message_token = message_token
        self.results = results


class ConnectionFailed(Event):
    def __init__(self, code, enhanced, text, permanent):
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.permanent = permanent


class ProtocolError(Event):
    def __init__(self, text):
        self.text = text


class Closed(Event):
    pass

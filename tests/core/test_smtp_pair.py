# Pairing tests: the sans-I/O SMTP client core (proto/smtp_client.py) talking to the
# server core (proto/smtp_server.py), bytes shuttled in memory, no sockets.
# Shared subset: runs under CPython (pytest) and MicroPython (tests/helpers/upy_runner.py).
from meta1lite.proto import smtp_server as ss
from meta1lite.proto.smtp_client import (
    NEED_DATA,
    Authenticated,
    ClientConnection,
    Closed,
    ConnectionFailed,
    NeedTLS,
    Ready,
    ReadyForBody,
    Send,
    TransactionResult,
)

# Both cores compiled from source in one process need more than a board's heap
# (on a board they are frozen bytecode); 256K leaves room.
UPY_HEAP = "256K"

MAX_ROUNDS = 200
BODY_CHUNK = 7                   # small, so dot-lines straddle chunk boundaries


class Pair:
    """A client and a server core joined back to back, with a scripted policy."""

    def __init__(self, messages, client_kw=None, server_kw=None, reject=(), password=None):
        self.client = ClientConnection("client.test", **(client_kw or {}))
        self.server = ss.ServerConnection("mx.test", **(server_kw or {}))
        self.messages = list(messages)       # (token, sender, rcpts, body)
        self.reject = reject
        self.password = password
        self.to_client = [self.server.greeting()]
        self.to_server = []
        self.chunks = []
        self.results = []
        self.client_events = []
        self.server_events = []
        self.wire_to_server = []
        self.current = None
        self.client_closed = False

    def run(self):
        """Shuttle bytes until neither side moves; returns the number of rounds."""
        for rounds in range(MAX_ROUNDS):
            moved = self._client_turn()
            moved = self._server_turn() or moved
            if not moved:
                return rounds
        raise AssertionError("no quiescence after %d rounds" % MAX_ROUNDS)

    # --- client side ---
    def _client_turn(self):
        moved = False
        if self.to_client:
            self.client.receive_data(b"".join(self.to_client))
            self.to_client = []
            moved = True
        while True:
            ev = self.client.next_event()
            if ev is NEED_DATA or isinstance(ev, Closed) and self.client_closed:
                return moved
            self.client_closed = isinstance(ev, Closed)
            self.client_events.append(ev)
            moved = True
            if isinstance(ev, (NeedTLS, Closed)):
                return moved
            self._client_event(ev)

    def _client_event(self, ev):
        if isinstance(ev, Send):
            self._to_server(ev.data)
        elif isinstance(ev, Ready):
            self._next_message()
        elif isinstance(ev, ReadyForBody):
            body = self.current[3]
            for i in range(0, len(body), BODY_CHUNK):
                self._to_server(self.client.encode_body_chunk(body[i:i + BODY_CHUNK]))
            self._to_server(self.client.end_body())
        elif isinstance(ev, TransactionResult):
            self.results.append(ev)

    def _next_message(self):
        if not self.messages:
            return self._to_server(self.client.quit())
        self.current = self.messages.pop(0)
        token, sender, rcpts, body = self.current
        eightbit = False
        for byte in body:
            eightbit = eightbit or byte > 127
        self._to_server(self.client.start_transaction(token, sender, rcpts, size=len(body),
                                                      eightbit=eightbit))

    def _to_server(self, data):
        if data:
            self.to_server.append(data)
            self.wire_to_server.append(data)

    # --- server side ---
    def _server_turn(self):
        moved = False
        while True:
            ev = self.server.next_event()
            if ev is ss.NEED_DATA:
                if not self.to_server:
                    return moved
                self.server.receive_data(b"".join(self.to_server))
                self.to_server = []
                moved = True
                continue
            if ev is ss.PAUSED or isinstance(ev, ss.Close) and self.server_events[-1:] == [ev]:
                return moved
            self.server_events.append(ev)
            moved = True
            self._server_event(ev)

    def _server_event(self, ev):
        server = self.server
        answer = None
        if isinstance(ev, ss.Reply):
            answer = ev.data
        elif isinstance(ev, ss.MailFrom):
            answer = server.accept_mail()
        elif isinstance(ev, ss.RcptTo):
            refused = ev.mailbox.address in self.reject
            answer = server.reject_rcpt("550 5.1.1 User unknown") if refused else server.accept_rcpt()
        elif isinstance(ev, ss.DataStart):
            answer = server.accept_data()
        elif isinstance(ev, ss.DataChunk):
            self.chunks.append(bytes(ev.data))     # valid until the next receive_data
        elif isinstance(ev, ss.DataEnd) and ev.ok:
            answer = server.accept_message()
        elif isinstance(ev, ss.AuthRequest):
            good = ev.password == self.password
            answer = server.accept_auth() if good else server.reject_auth()
        if answer:
            self.to_client.append(answer)

    def received_body(self):
        return b"".join(self.chunks)

    def client_kinds(self):
        return [type(ev).__name__ for ev in self.client_events]

    def server_kinds(self):
        return [type(ev).__name__ for ev in self.server_events
                if not isinstance(ev, (ss.Reply, ss.StateChange, ss.DataChunk))]


DOT_BODY = (b"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nmiddle . dot\r\n"
            b"...\r\n. \r\nlast line .\r\n.")


def test_deliver_message_with_dot_lines():
    pair = Pair([("q1", "a@client.test", ["b@mx.test"], DOT_BODY + b"\r\n")])
    pair.run()
    assert pair.received_body() == DOT_BODY + b"\r\n"
    assert len(pair.results) == 1
    assert pair.results[0].results == [("b@mx.test", 250, "2.0.0", "OK: queued", "sent")]
    assert isinstance(pair.client_events[-1], Closed)
    assert isinstance(pair.server_events[-1], ss.Close)


def test_body_without_final_crlf_gets_one():
    pair = Pair([("q1", "a@client.test", ["b@mx.test"], b"no newline at the end")])
    pair.run()
    assert pair.received_body() == b"no newline at the end\r\n"


def test_pipelining_one_write_and_mixed_results():
    rcpts = ["b@mx.test", "nobody@mx.test", "c@mx.test"]
    pair = Pair([("q1", "", rcpts, b"hi\r\n")], reject=("nobody@mx.test",))
    pair.run()
    batch = [w for w in pair.wire_to_server if w.startswith(b"MAIL")][0]
    assert batch == (b"MAIL FROM:<> SIZE=4\r\nRCPT TO:<b@mx.test>\r\n"
                     b"RCPT TO:<nobody@mx.test>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\n")
    classes = [(r[0], r[1], r[4]) for r in pair.results[0].results]
    assert classes == [("b@mx.test", 250, "sent"), ("nobody@mx.test", 550, "bounced"),
                       ("c@mx.test", 250, "sent")]
    assert pair.received_body() == b"hi\r\n"


def test_connection_reuse_two_messages_and_all_rejected():
    messages = [("q1", "a@client.test", ["nobody@mx.test"], b"one\r\n"),
                ("q2", "a@client.test", ["b@mx.test"], b"two\r\n.\r\n")]
    pair = Pair(messages, reject=("nobody@mx.test",))
    pair.run()
    assert [r.message_token for r in pair.results] == ["q1", "q2"]
    assert pair.results[0].results[0][4] == "bounced"
    assert pair.results[1].results[0][4] == "sent"
    assert pair.received_body() == b"two\r\n.\r\n"
    assert pair.server_kinds().count("Rset") == 1
    assert pair.server_kinds()[-1] == "Close"


def test_starttls_negotiation_both_sides():
    pair = Pair([("q1", "a@client.test", ["b@mx.test"], b"secret\r\n")],
                client_kw={"tls": "required"}, server_kw={"tls_available": True})
    pair.run()
    assert isinstance(pair.client_events[-1], NeedTLS)
    assert "StartTLS" in pair.server_kinds()
    assert not any(w.startswith(b"MAIL") for w in pair.wire_to_server)
    # both I/O layers would now handshake; then:
    pair.server.tls_started()
    pair.to_server.append(pair.client.tls_started())
    pair.run()
    assert pair.client.tls_active and pair.server.tls
    assert pair.received_body() == b"secret\r\n"
    assert pair.results[0].results[0][4] == "sent"


def test_tls_required_against_server_without_starttls():
    pair = Pair([("q1", "a@client.test", ["b@mx.test"], b"x\r\n")], client_kw={"tls": "required"})
    pair.run()
    assert "ConnectionFailed" in pair.client_kinds()
    assert not any(w.startswith(b"MAIL") for w in pair.wire_to_server)
    assert pair.server_kinds()[-1] == "Close" and pair.chunks == []


def test_auth_over_tls_then_deliver():
    for password, delivered in (("right", True), ("wrong", False)):
        pair = Pair([("q1", "a@client.test", ["b@mx.test"], b"x\r\n")],
                    client_kw={"tls_active": True, "credentials": ("me", password)},
                    server_kw={"tls_active": True, "auth_available": True}, password="right")
        pair.run()
        assert ("Authenticated" in pair.client_kinds()) == delivered
        assert bool(pair.results) == delivered
        if not delivered:
            failed = [ev for ev in pair.client_events if isinstance(ev, ConnectionFailed)][0]
            assert (failed.code, failed.enhanced) == (535, "5.7.8")
        assert isinstance([ev for ev in pair.client_events if isinstance(ev, (Authenticated, ConnectionFailed))][0],
                          Authenticated if delivered else ConnectionFailed)


def test_8bit_message_with_server_8bitmime():
    body = "caf\u00e9\r\n".encode()
    pair = Pair([("q1", "a@client.test", ["b@mx.test"], body)])
    pair.run()
    mail = [w for w in pair.wire_to_server if w.startswith(b"MAIL")][0]
    assert b" BODY=8BITMIME" in mail
    mail_from = [ev for ev in pair.server_events if isinstance(ev, ss.MailFrom)][0]
    assert mail_from.body == "8BITMIME" and mail_from.size == len(body)
    assert pair.received_body() == body

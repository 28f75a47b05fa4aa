# Unit tests of meta1lite.proto.smtp_server, the sans-I/O SMTP server core.
# Shared subset: runs under CPython (pytest) and the MicroPython unix port.
from meta1lite.proto import smtp_server as S  # noqa: I001 - first: the biggest compile
from meta1lite.proto import replies
from support import raises

# Compiled from source here, the server core and this module take ~110K of the
# 64-bit unix port's heap; on the 192K default the 7,200-byte feeds of
# test_large_message_streams_in_bounded_chunks then depend on where the holes fall.
# The board's figures come from the frozen firmware (tests/test_board_sim.py).
UPY_HEAP = "224K"

SMUGGLING_ENDS = (b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n")
SMUGGLED = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
ENVELOPE = b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"


class Session:
    """Drives a ServerConnection like the I/O layer: feeds bytes, answers decisions
    (accept unless a policy says otherwise), collects reply bytes and events."""

    def __init__(self, **options):
        settings = {"max_message_size": 10000, "max_recipients": 5}
        settings.update(options)
        self.conn = S.ServerConnection("relay.test", **settings)
        self.out = []
        self.events = []
        self.rcpt_policy = None           # mailbox -> None (accept) or a reply ("554 5.7.1 ...")
        self.mail_policy = None
        self.data_policy = None
        self.password = "secret"

    def feed(self, data):
        self.conn.receive_data(data)
        return self.pump()

    def pump(self):
        while True:
            event = self.conn.next_event()
            if event is S.NEED_DATA or event is S.PAUSED:
                return event
            if isinstance(event, S.DataChunk):      # valid until the next receive_data
                event = S.DataChunk(bytes(event.data))
            self.events.append(event)
            self._answer(event)
            if isinstance(event, S.Close):
                return event

    def _answer(self, event):
        conn = self.conn
        if isinstance(event, S.Reply):
            self.out.append(event.data)
        elif isinstance(event, S.MailFrom):
            refusal = self.mail_policy and self.mail_policy(event.mailbox)
            self.out.append(conn.reject_mail(refusal) if refusal else conn.accept_mail())
        elif isinstance(event, S.RcptTo):
            refusal = self.rcpt_policy and self.rcpt_policy(event.mailbox)
            self.out.append(conn.reject_rcpt(refusal) if refusal else conn.accept_rcpt())
        elif isinstance(event, S.DataStart):
            refusal = self.data_policy
            self.out.append(conn.reject_data(refusal) if refusal else conn.accept_data())
        elif isinstance(event, S.DataEnd) and event.ok:
            self.out.append(conn.accept_message())
        elif isinstance(event, S.AuthRequest):
            good = event.password == self.password
            self.out.append(conn.accept_auth() if good else conn.reject_auth())

    def codes(self):
        """Code of every reply so far (one per reply, multi-line counted once)."""
        return [int(line[:3]) for line in self.lines() if line[3:4] == b" "]

    def lines(self):
        return b"".join(self.out).split(b"\r\n")[:-1]

    def last(self):
        return self.lines()[-1]

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def body(self):
        return b"".join([e.data for e in self.of(S.DataChunk)])

    def clear(self):
        self.out = []
        self.events = []


def _greeted(**options):
    session = Session(**options)
    session.feed(b"EHLO client.example\r\n")
    session.clear()
    return session


def _in_data(**options):
    session = Session(**options)
    session.feed(ENVELOPE)
    assert session.codes() == [250, 250, 250, 354], session.lines()
    session.clear()
    return session


def test_greeting_and_ehlo_keywords():
    session = Session(max_message_size=12345)
    assert session.conn.greeting() == b"220 relay.test ESMTP meta1lite\r\n"
    session.feed(b"EHLO client.example\r\n")
    assert session.lines() == [b"250-relay.test", b"250-PIPELINING", b"250-SIZE 12345",
                               b"250-8BITMIME", b"250-ENHANCEDSTATUSCODES", b"250 SMTPUTF8"]
    helo = session.of(S.Helo)[0]
    assert helo.name == "client.example" and helo.esmtp
    words = Session(tls_available=True, auth_available=True).conn.ehlo_keywords()
    assert "STARTTLS" in words and "AUTH PLAIN LOGIN" not in words
    words = Session(auth_available=True, auth_requires_tls=False).conn.ehlo_keywords()
    assert "AUTH PLAIN LOGIN" in words and "STARTTLS" not in words
    words = Session(tls_available=True, tls_active=True, auth_available=True).conn.ehlo_keywords()
    assert "AUTH PLAIN LOGIN" in words and "STARTTLS" not in words
    session = Session()
    session.feed(b"HELO client.example\r\n")
    assert session.lines() == [b"250 relay.test"] and not session.of(S.Helo)[0].esmtp


# reply code of each command in each state: connected, greeted, mail, rcpt
COMMAND_TABLE = (
    (b"EHLO client.example", (250, 250, 250, 250)),
    (b"HELO client.example", (250, 250, 250, 250)),
    (b"EHLO", (501, 501, 501, 501)),
    (b"MAIL FROM:<x@example.org>", (503, 250, 503, 503)),
    (b"MAIL TO:<x@example.org>", (503, 501, 503, 503)),
    (b"RCPT TO:<y@example.org>", (503, 503, 250, 250)),
    (b"RCPT FROM:<y@example.org>", (503, 503, 501, 501)),
    (b"DATA", (503, 503, 554, 354)),
    (b"DATA now", (503, 503, 554, 501)),
    (b"RSET", (250, 250, 250, 250)),
    (b"RSET x", (501, 501, 501, 501)),
    (b"NOOP", (250, 250, 250, 250)),
    (b"NOOP anything", (250, 250, 250, 250)),
    (b"VRFY someone", (252, 252, 252, 252)),
    (b"VRFY", (501, 501, 501, 501)),
    (b"HELP", (214, 214, 214, 214)),
    (b"STARTTLS", (502, 502, 502, 502)),
    (b"AUTH PLAIN", (502, 502, 502, 502)),
    (b"EXPN list", (502, 502, 502, 502)),
    (b"TURN", (502, 502, 502, 502)),
    (b"ETRN example.org", (502, 502, 502, 502)),
    (b"BDAT 10 LAST", (502, 502, 502, 502)),
    (b"XYZZY", (500, 500, 500, 500)),
    (b"", (500, 500, 500, 500)),
    (b"QUIT", (221, 221, 221, 221)),
)
STATE_SETUP = (b"", b"EHLO c.example\r\n", b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n",
               b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
STATE_NAMES = (S.CONNECTED, S.GREETED, S.MAIL, S.RCPT)


def test_every_command_in_every_state():
    for command, expected in COMMAND_TABLE:
        for index in range(4):
            session = Session()
            if STATE_SETUP[index]:
                session.feed(STATE_SETUP[index])
            assert session.conn.state == STATE_NAMES[index]
            session.clear()
            session.feed(command + b"\r\n")
            got = session.codes()
            assert got == [expected[index]], (command, STATE_NAMES[index], session.lines())
            last = session.last()
            if got[0] != 250 or not command.startswith((b"EHLO", b"HELO")):
                assert last[4:5].isdigit() and last[5:6] == b"." and last[3:4] == b" ", last


def test_command_verbs_are_case_insensitive_like_smtplib_sends_them():
    session = Session()
    session.feed(b"ehlo [127.0.0.1]\r\nmail FROM:<a@example.org> size=10\r\n"
                 b"rcpt TO:<b@example.org>\r\ndata\r\nSubject: x\r\n\r\nhi\r\n.\r\nquit\r\n")
    assert session.codes() == [250, 250, 250, 354, 250, 221]
    assert session.of(S.MailFrom)[0].size == 10
    assert session.body() == b"Subject: x\r\n\r\nhi\r\n"
    session = Session()
    session.feed(b"EHLO c\r\nMAIL FROM: <a@example.org> BODY=8BITMIME SMTPUTF8\r\n")
    mail = session.of(S.MailFrom)[0]
    assert session.codes() == [250, 250] and mail.body == "8BITMIME" and mail.smtputf8


def test_mail_and_rcpt_parameters():
    session = _greeted()
    session.feed(b"MAIL FROM:<a@example.org> SIZE=10001\r\n")
    assert session.last() == b"552 5.3.4 Message size exceeds fixed maximum message size"
    for bad in (b"SIZE=x", b"SIZE=1 size=2", b"BODY=BINARYMIME", b"SMTPUTF8=yes", b"=", b"SIZE"):
        session.feed(b"MAIL FROM:<a@example.org> " + bad + b"\r\n")
        assert session.last().startswith(b"501 5.5.4"), (bad, session.last())
    session.feed(b"MAIL FROM:<a@example.org> RET=HDRS\r\n")
    assert session.last().startswith(b"555 5.5.4")
    session.feed(b"MAIL FROM:<a@example.org> AUTH=<>\r\nRCPT TO:<b@example.org> NOTIFY=NEVER\r\n")
    assert session.codes()[-2:] == [250, 555]
    session.feed(b"RCPT TO:<>\r\nRCPT TO:<Postmaster>\r\n")
    assert session.codes()[-2:] == [501, 250]
    assert session.of(S.RcptTo)[0].mailbox.address == "Postmaster"


def test_pipelined_commands_reply_in_order():
    session = Session()
    session.feed(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
                 b"RCPT TO:<bad@nowhere.example>\r\nRCPT TO:<c@example.org>\r\nNOOP\r\n")
    assert session.codes() == [250, 250, 250, 250, 250, 250]
    session = Session()
    session.rcpt_policy = lambda box: "554 5.7.1 Relay access denied" \
        if box.domain == "nowhere.example" else None
    session.feed(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
                 b"RCPT TO:<bad@nowhere.example>\r\nRCPT TO:<c@example.org>\r\nNOOP\r\n")
    assert session.codes() == [250, 250, 250, 554, 250, 250]
    assert b"554 5.7.1 Relay access denied" in session.lines()


def test_decisions_pause_the_core():
    conn = S.ServerConnection("relay.test")
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\n")
    kinds = []
    while True:
        event = conn.next_event()
        if event is S.PAUSED:
            break
        kinds.append(type(event).__name__)
    assert kinds == ["StateChange", "Helo", "Reply", "MailFrom"]
    assert conn.next_event() is S.PAUSED
    raises(S.UsageError, conn.accept_rcpt)
    assert conn.reject_mail() == b"452 4.3.1 Insufficient system storage\r\n"
    assert conn.state == S.GREETED
    assert conn.next_event().data == b"250 2.0.0 OK\r\n"
    assert conn.next_event() is S.NEED_DATA
    raises(S.UsageError, conn.accept_message)


def test_state_changes_are_recorded():
    session = Session()
    session.feed(ENVELOPE + b"hi\r\n.\r\nQUIT\r\n")
    changes = [(e.old, e.new) for e in session.of(S.StateChange)]
    assert changes == [(S.CONNECTED, S.GREETED), (S.GREETED, S.MAIL), (S.MAIL, S.RCPT),
                       (S.RCPT, S.DATA), (S.DATA, S.GREETED), (S.GREETED, S.CLOSED)]
    assert session.of(S.Close)[0].reason == "quit" and session.of(S.Quit)
    assert session.conn.next_event() is session.of(S.Close)[0]


def test_too_many_recipients():
    session = _greeted(max_recipients=2)
    session.feed(b"MAIL FROM:<a@example.org>\r\n" + b"RCPT TO:<b@example.org>\r\n" * 3)
    assert session.codes() == [250, 250, 250, 452]
    assert session.last() == b"452 4.5.3 Too many recipients"


def test_data_with_no_valid_recipients_and_rset():
    session = _greeted()
    session.rcpt_policy = lambda box: "550 5.1.1 User unknown"
    session.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nRSET\r\n"
                 b"MAIL FROM:<>\r\n")
    assert session.codes() == [250, 550, 554, 250, 250]
    assert session.lines()[2] == b"554 5.5.1 No valid recipients"
    assert len(session.of(S.Rset)) == 1 and session.of(S.MailFrom)[1].mailbox.null


def test_message_bytes_in_the_same_packet_as_data():
    session = Session()
    session.feed(ENVELOPE + b"Subject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert session.codes() == [250, 250, 250, 354, 250, 221]
    assert session.body() == b"Subject: t\r\n\r\nbody\r\n"
    assert len(session.of(S.DataEnd)) == 1 and session.of(S.DataEnd)[0].size == 20


def test_rejected_data_keeps_following_lines_as_commands():
    session = Session()
    session.data_policy = "452 4.3.1 Insufficient system storage"
    session.feed(ENVELOPE + b"NOOP\r\n")
    assert session.codes() == [250, 250, 250, 452, 250]
    assert session.conn.state == S.RCPT


def test_empty_message_and_dot_unstuffing():
    session = _in_data()
    session.feed(b".\r\n")
    assert session.codes() == [250] and session.body() == b""
    assert session.of(S.DataEnd)[0].ok
    session = _in_data()
    session.feed(b"..\r\n...two\r\n.x\r\na.b\r\n .\r\n.\r\n")
    assert session.body() == b".\r\n..two\r\nx\r\na.b\r\n .\r\n"
    assert session.codes() == [250]


def test_smuggling_payloads_are_rejected_after_the_real_dot():
    for end in SMUGGLING_ENDS:
        session = _in_data()
        session.feed(b"Subject: one\r\n\r\nbody" + end + SMUGGLED + b"smuggled\r\n.\r\n")
        assert len(session.of(S.DataEnd)) == 1, end
        assert not session.of(S.MailFrom) and not session.of(S.DataStart), end
        assert not session.of(S.DataEnd)[0].ok
        assert session.lines() == [b"550 5.5.2 Message contains bare CR or LF (SMTP smuggling "
                                   b"protection)"], end
        session.clear()
        session.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                     b"ok\r\n.\r\n")
        assert session.codes() == [250, 250, 354, 250], end
        assert session.body() == b"ok\r\n" and session.of(S.DataEnd)[0].ok


def test_smuggling_payloads_are_normalized_as_data():
    for end in SMUGGLING_ENDS:
        session = _in_data(bare_lf="normalize")
        session.feed(b"body" + end + SMUGGLED + b"tail\r\n.\r\n")
        assert len(session.of(S.DataEnd)) == 1 and session.of(S.DataEnd)[0].ok, end
        assert not session.of(S.MailFrom) and session.codes() == [250], end
        body = session.body()
        assert SMUGGLED in body, (end, body)
        assert body.replace(b"\r\n", b"").find(b"\r") < 0, body
        assert body.replace(b"\r\n", b"").find(b"\n") < 0, body
        assert body.endswith(b"tail\r\n")
        # the dot after the bare newline is kept as data, never an end-of-data line
        assert body.startswith(b"body\r\n"), body


def test_normalize_bare_cr_and_lf():
    session = _in_data(bare_lf="normalize")
    session.feed(b"a\nb\rc\r\r\nd\n\r\n.\r\n")
    assert session.body() == b"a\r\nb\r\nc\r\n\r\nd\r\n\r\n"
    assert session.codes() == [250]
    session = _in_data(bare_lf="normalize")
    session.feed(b"x\n.\n.\r\n")          # "\n.\n" and "\n.\r\n" are data
    assert session.body() == b"x\r\n.\r\n.\r\n" and session.codes() == []
    session.feed(b".\r\n")                 # the real end: CRLF "." CRLF
    assert session.codes() == [250] and len(session.of(S.DataEnd)) == 1


def _body_of(data, splits, **options):
    session = _in_data(**options)
    start = 0
    for cut in splits:
        session.feed(data[start:cut])
        start = cut
    session.feed(data[start:])
    return session.body(), session.codes(), len(session.of(S.DataEnd))


def test_split_at_every_byte_boundary_gives_identical_chunks():
    data = (b"..lead\r\nline\r\n.\rx\r\n\r\n.\r.\r\n..\r\nend\r\n.\r\nNOOP\r\n")
    for mode in ("normalize", "reject"):
        whole = _body_of(data, (), bare_lf=mode)
        for cut in range(1, len(data)):
            assert _body_of(data, (cut,), bare_lf=mode) == whole, (mode, cut)
        assert _body_of(data, range(1, len(data)), bare_lf=mode) == whole
    assert whole[1] == [550, 250]


def test_oversize_message_gets_552_after_the_dot():
    session = _in_data(max_message_size=100)
    line = b"x" * 78 + b"\r\n"
    session.feed(line * 3)
    assert not session.out and session.conn.state == S.DATA
    session.feed(line * 2 + b".\r\n")
    assert session.lines() == [b"552 5.3.4 Message size exceeds fixed maximum message size"]
    end = session.of(S.DataEnd)[0]
    assert not end.ok and end.reply_if_rejected == replies.MESSAGE_TOO_BIG and end.size == 400
    assert len(session.body()) <= 100
    session.clear()
    session.feed(b"MAIL FROM:<a@example.org>\r\n")
    assert session.codes() == [250]


def test_line_over_1000_octets_gets_500_after_the_dot():
    session = _in_data()
    session.feed(b"x" * 998 + b"\r\n.\r\n")
    assert session.codes() == [250] and session.of(S.DataEnd)[0].ok
    for line in (b"x" * 999 + b"\r\n", b"." + b"x" * 998 + b"\r\n"):
        session = _in_data()
        session.feed(line[:500])
        session.feed(line[500:] + b"more\r\n.\r\n")
        assert session.lines() == [b"500 5.5.2 Line in message exceeds 1000 octets"]
        session.clear()
        session.feed(b"NOOP\r\n")
        assert session.codes() == [250]


def test_large_message_streams_in_bounded_chunks():
    session = _in_data(max_message_size=0)
    line = b"0123456789" * 7 + b"\r\n"
    block = line * 100
    total = 0
    for i in range(30):
        session.feed(block)
        assert session.conn.buffered() < 3
        for event in session.of(S.DataChunk):
            assert len(event.data) <= S.DATA_CHUNK + 2
            total += len(event.data)
        session.events = []
    session.feed(b".\r\n")
    assert total + len(session.body()) == 30 * len(block)
    assert session.codes() == [250] and session.of(S.DataEnd)[0].size == 30 * len(block)


def test_receive_data_is_bounded():
    conn = S.ServerConnection("relay.test", max_buffer=1024)
    raises(S.UsageError, conn.receive_data, b"NOOP\r\n" * 200)
    conn.receive_data(b"NOOP\r\n" * 100)
    assert conn.buffered() == 600


def test_starttls_discards_pipelined_plaintext():
    session = _greeted(tls_available=True, auth_available=True)
    session.feed(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.org>\r\n")
    assert session.lines() == [b"220 2.0.0 Ready to start TLS"]
    assert session.of(S.StartTLS) and not session.of(S.MailFrom)
    assert session.conn.state == S.STARTTLS and session.pump() is S.PAUSED
    session.feed(b"NOOP\r\n")                  # plaintext before the handshake: ignored
    assert session.conn.buffered() == 0
    session.conn.tls_started()
    session.clear()
    session.feed(b"MAIL FROM:<a@example.org>\r\nEHLO c\r\n")
    assert session.codes() == [503, 250] and not session.of(S.MailFrom)
    assert session.last() == b"250 AUTH PLAIN LOGIN" and b"250-STARTTLS" not in session.lines()
    session.feed(b"STARTTLS\r\n")
    assert session.last() == b"503 5.5.1 TLS already active"
    assert session.conn.received_protocol() == "ESMTPS"


def test_starttls_needs_ehlo_and_no_transaction():
    session = Session(tls_available=True)
    session.feed(b"STARTTLS\r\nHELO c\r\nSTARTTLS\r\nEHLO c\r\nMAIL FROM:<a@example.org>\r\n"
                 b"STARTTLS\r\n")
    assert session.codes() == [503, 250, 503, 250, 250, 503]


def _b64(data):
    import binascii
    return binascii.b2a_base64(data).strip()


def _auth_session(**options):
    settings = {"auth_available": True, "auth_requires_tls": False}
    settings.update(options)
    return _greeted(**settings)


def test_auth_plain_with_initial_response():
    session = _auth_session()
    session.feed(b"AUTH PLAIN " + _b64(b"\x00alice\x00secret") + b"\r\n")
    request = session.of(S.AuthRequest)[0]
    assert (request.mechanism, request.user, request.password) == ("PLAIN", "alice", "secret")
    assert "secret" not in repr(request)
    assert session.lines() == [b"235 2.7.0 Authentication successful"]
    assert session.conn.authenticated == "alice"
    session.feed(b"AUTH PLAIN\r\n")
    assert session.last() == b"503 5.5.1 Already authenticated"
    assert session.conn.received_protocol() == "ESMTPA"


def test_auth_plain_with_challenge_and_failure():
    session = _auth_session()
    session.feed(b"AUTH plain\r\n")
    assert session.lines() == [b"334 "] and session.conn.state == S.AUTH
    session.feed(_b64(b"admin\x00alice\x00wrong") + b"\r\n")
    assert session.last() == b"535 5.7.8 Authentication credentials invalid"
    assert session.of(S.AuthRequest)[0].authzid == "admin"
    assert session.conn.authenticated is None and session.conn.state == S.GREETED


def test_auth_login():
    session = _auth_session()
    session.feed(b"AUTH LOGIN\r\n")
    assert session.lines() == [b"334 VXNlcm5hbWU6"]
    session.feed(_b64(b"bob") + b"\r\n")
    assert session.last() == b"334 UGFzc3dvcmQ6"
    session.feed(_b64(b"secret") + b"\r\n")
    assert session.last().startswith(b"235 2.7.0")
    assert session.of(S.AuthRequest)[0].user == "bob"
    session = _auth_session()
    session.feed(b"AUTH LOGIN " + _b64(b"bob") + b"\r\n" + _b64(b"secret") + b"\r\n")
    assert session.codes() == [334, 235]


def test_auth_cancel_bad_base64_and_unknown_mechanism():
    session = _auth_session()
    session.feed(b"AUTH LOGIN\r\n*\r\n")
    assert session.last() == b"501 5.0.0 Authentication cancelled"
    session.feed(b"AUTH PLAIN\r\n!!notbase64\r\n")
    assert session.last().startswith(b"501 5.5.2")
    session.feed(b"AUTH PLAIN " + _b64(b"only-one-part") + b"\r\n")
    assert session.last().startswith(b"501 5.5.2")
    session.feed(b"AUTH CRAM-MD5\r\nAUTH\r\nNOOP\r\n")
    assert session.codes()[-3:] == [504, 501, 250]
    assert not session.of(S.AuthRequest) and session.conn.state == S.GREETED


def test_auth_refused_over_plaintext():
    session = _greeted(auth_available=True, tls_available=True)
    session.feed(b"AUTH PLAIN " + _b64(b"\x00alice\x00secret") + b"\r\n")
    assert session.last() == b"538 5.7.11 Encryption required for requested authentication " \
        b"mechanism"
    assert not session.of(S.AuthRequest)
    session = Session(auth_available=True, auth_requires_tls=False)
    session.feed(b"AUTH PLAIN\r\nHELO c\r\nAUTH PLAIN\r\n")
    assert session.codes() == [503, 250, 503]


def test_too_many_bad_commands_close_with_421():
    session = Session(max_bad_commands=3)
    session.feed(b"FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nNOOP\r\nNOOP\r\n")
    assert session.codes() == [500, 500, 250, 500, 421]
    assert session.last() == b"421 4.7.0 Too many errors, closing connection"
    assert session.of(S.Close)[0].reason == "too many errors"
    assert session.conn.state == S.CLOSED
    session.conn.receive_data(b"NOOP\r\n")
    assert isinstance(session.conn.next_event(), S.Close)


def test_over_long_command_line_is_drained():
    session = _greeted()
    session.feed(b"NOOP " + b"x" * 505 + b"\r\n")          # 512 octets: allowed
    assert session.codes() == [250]
    session.feed(b"NOOP " + b"x" * 300)
    session.feed(b"x" * 300)
    assert session.conn.buffered() < 512
    for i in range(20):
        session.feed(b"y" * 1000)
        assert session.conn.buffered() <= 1
    session.feed(b"z\r")
    session.feed(b"\nNOOP\r\n")
    assert session.codes() == [250, 500, 250]
    assert session.lines()[1] == b"500 5.5.2 Line too long"


def test_nul_and_bare_newlines_in_commands():
    session = _greeted()
    session.feed(b"NO\x00OP\r\nMAIL FROM:<a\x00@example.org>\r\nNOOP\nNOOP\r\n")
    assert session.codes() == [500, 500, 500]
    assert session.lines()[0] == b"500 5.5.2 NUL character in command"
    assert not session.of(S.MailFrom)


def test_eof_closes():
    session = _greeted()
    session.feed(b"NOOP\r\nNOO")
    assert session.feed(b"").reason == "eof"
    session = _in_data()
    session.feed(b"partial message\r\n")
    assert session.feed(b"").reason == "eof during DATA"
    assert not session.of(S.DataEnd)


def test_shutdown():
    session = _greeted()
    assert session.conn.shutdown() == b"421 4.4.2 Idle timeout, closing connection\r\n"
    assert session.pump().reason.startswith("shutdown")


def test_smtputf8_addresses():
    session = _greeted()
    session.feed(u"MAIL FROM:<jos\u00e9@example.org>\r\n".encode("utf-8"))
    assert session.last().startswith(b"553 5.6.7")
    session.feed(u"MAIL FROM:<jos\u00e9@example.org> SMTPUTF8\r\n".encode("utf-8"))
    session.feed(u"RCPT TO:<m\u00fcller@example.org>\r\n".encode("utf-8"))
    assert session.codes()[-2:] == [250, 250]
    assert session.conn.received_protocol() == "UTF8SMTP"
    session = _greeted(smtputf8=False)
    session.feed(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n")
    assert session.last().startswith(b"555")


def test_help_lists_starttls_and_auth_only_when_offered():
    # issue 11 item 6: HELP listed STARTTLS and AUTH with neither configured
    plain = Session()
    plain.feed(b"HELP\r\n")
    assert plain.last().startswith(b"214 2.0.0 ") and b"VRFY HELP" in plain.last()
    assert b"STARTTLS" not in plain.last() and b"AUTH" not in plain.last()
    full = Session(tls_available=True, auth_available=True)
    full.feed(b"HELP\r\n")
    assert full.last().endswith(b" HELP STARTTLS AUTH")
    tls = Session(tls_available=True, tls_active=True)
    tls.feed(b"HELP\r\n")
    assert b"STARTTLS" not in tls.last()


def test_junk_commands_are_limited_per_message():
    # issue 11 item 4: NOOP/RSET/VRFY/HELP kept a slot forever (smtpd_junk_command_limit)
    session = Session(max_junk_commands=4)
    session.feed(b"EHLO c.example\r\nNOOP\r\nRSET\r\nVRFY x\r\nHELP\r\n")
    assert session.codes()[1:] == [250, 250, 252, 214]
    session.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n")
    session.clear()
    session.feed(b"NOOP\r\n" * 4)               # a message sent: the count starts again
    assert session.codes() == [250] * 4
    session.clear()
    session.feed(b"NOOP\r\nNOOP\r\n")
    assert session.lines() == [b"421 4.7.0 Too many commands that do nothing, closing connection"]
    assert session.conn.state == S.CLOSED


def test_body_pipelined_behind_data_survives_the_buffer_made_for_data():
    # at DATA the input buffer is replaced by a roomier one (a board's heap): what the
    # client sent behind DATA in the same read is carried over, in order
    session = _greeted(data_chunk=64)
    body = b"".join(b"line %03d of the message\r\n" % n for n in range(40))
    session.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" + body[:100])
    session.feed(body[100:] + b".\r\nMAIL FROM:<c@example.org>\r\n")
    assert session.codes() == [250, 250, 354, 250, 250]
    assert session.body() == body


def test_the_data_buffer_is_given_back_at_the_end_of_the_message():
    # an idle session holds no DATA buffer (a board's heap: 1K a session); what the
    # client pipelined behind the dot is kept, and the next message gets a new one
    session = _greeted(data_chunk=64)
    body = b"".join(b"line %03d of the message\r\n" % n for n in range(10))
    session.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" + body)
    roomy = session.conn._buf
    session.feed(b".\r\nRSET\r")
    assert session.conn._buf is not roomy and session.conn.buffered() == len(b"RSET\r")
    session.feed(b"\nMAIL FROM:<c@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    session.feed(body + b".\r\n")
    assert session.codes() == [250, 250, 354, 250, 250, 250, 250, 354, 250]
    assert session.conn.buffered() == 0


def test_the_io_layer_makes_room_for_data_before_the_354():
    # smtps allocates the DATA buffer before it answers DATA (a board's heap may have
    # no run for it: it refuses then); the bytes behind DATA are carried over, and
    # accept_data keeps that buffer
    session = _greeted(data_chunk=64)
    body = b"".join(b"line %03d of the message\r\n" % n for n in range(40))
    session.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
    session.conn.receive_data(b"DATA\r\n" + body[:100])
    assert isinstance(session.conn.next_event(), S.DataStart)
    session.conn.make_room_for_data()
    roomy = session.conn._buf
    session.out.append(session.conn.accept_data())
    assert session.conn._buf is roomy
    session.pump()
    session.feed(body[100:] + b".\r\n")
    assert session.codes() == [250, 250, 354, 250]
    assert session.body() == body

# Unit tests of the sans-I/O SMTP client core (meta1lite/proto/smtp_client.py)
# against scripted server replies. Shared subset: runs under CPython (pytest) and
# MicroPython (tests/helpers/upy_runner.py); no pytest, no f-strings.
import binascii

from support import raises

from meta1lite.proto import smtp_client as sc
from meta1lite.proto.smtp_client import (
    NEED_DATA,
    Authenticated,
    Capabilities,
    ClientConnection,
    ClientStateError,
    Closed,
    ConnectionFailed,
    Greeting,
    NeedTLS,
    ProtocolError,
    Ready,
    ReadyForBody,
    Send,
    TransactionResult,
)

GREETING = b"220 mx.test ESMTP ready\r\n"
PASSWORD = "s3cret-Pa55"


# --- helpers -------------------------------------------------------------------
def drain(conn):
    events = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return events
        events.append(ev)
        if isinstance(ev, Closed):
            return events


def feed(conn, data):
    conn.receive_data(data)
    return drain(conn)


def sent(events):
    return b"".join(ev.data for ev in events if isinstance(ev, Send))


def names(events):
    return [type(ev).__name__ for ev in events]


def first(events, cls):
    for ev in events:
        if isinstance(ev, cls):
            return ev
    raise AssertionError("no %s in %r" % (cls.__name__, events))


def ehlo_reply(*keywords):
    lines = ["mx.test greets relay.test"] + list(keywords)
    out = []
    for i, line in enumerate(lines):
        out.append("250%s%s\r\n" % (" " if i == len(lines) - 1 else "-", line))
    return "".join(out).encode()


def ready_conn(*keywords, **kw):
    conn = ClientConnection("relay.test", **kw)
    assert sent(feed(conn, GREETING)) == b"EHLO relay.test\r\n"
    events = feed(conn, ehlo_reply(*keywords))
    assert isinstance(events[-1], Ready), events
    return conn


def deliver_body(conn, body):
    return conn.encode_body_chunk(body) + conn.end_body()


# --- reply parsing ---------------------------------------------------------------
def test_parse_reply_line():
    assert sc.parse_reply_line(b"250-mx hello") == (250, False, "mx hello")
    assert sc.parse_reply_line(b"250 ok") == (250, True, "ok")
    assert sc.parse_reply_line(b"354") == (354, True, "")
    assert sc.parse_reply_line(b"hello") is None
    assert sc.parse_reply_line(b"25") is None
    assert sc.parse_reply_line(b"250ok") is None
    assert sc.parse_reply_line(b"650 ok") is None
    assert sc.parse_reply_line(b"2x0 ok") is None


def test_split_enhanced():
    assert sc.split_enhanced(250, "2.1.0 sender ok") == ("2.1.0", "sender ok")
    assert sc.split_enhanced(550, "5.1.1 unknown") == ("5.1.1", "unknown")
    assert sc.split_enhanced(550, "2.1.1 mismatch") == (None, "2.1.1 mismatch")
    assert sc.split_enhanced(250, "mx.example.com hi") == (None, "mx.example.com hi")
    assert sc.split_enhanced(250, "2.0.1234 x") == (None, "2.0.1234 x")
    assert sc.split_enhanced(250, "2.0.0") == ("2.0.0", "")


def test_greeting_then_ehlo():
    conn = ClientConnection("relay.test")
    assert conn.next_event() is NEED_DATA
    assert conn.waiting_for() == sc.PHASE_GREETING
    events = feed(conn, b"220-mx.test first\r\n220 second\r\n")
    assert names(events) == ["Greeting", "Send"]
    assert events[0].code == 220 and events[0].text == "mx.test first second"
    assert events[1].data == b"EHLO relay.test\r\n"


def test_reply_split_across_reads():
    conn = ClientConnection("relay.test")
    for byte in GREETING[:-1]:
        assert feed(conn, bytes([byte])) == []
    assert names(feed(conn, b"\n")) == ["Greeting", "Send"]


def test_multiline_reply_with_enhanced_codes():
    conn = ready_conn("ENHANCEDSTATUSCODES")
    conn.start_transaction("q1", "a@x.test", ["b@y.test"])
    feed(conn, b"250 2.1.0 ok\r\n")
    events = feed(conn, b"550-5.1.1 no such user\r\n550-5.1.1 here at all\r\n550 5.1.1 sorry\r\n")
    result = first(events, TransactionResult)
    assert result.results == [("b@y.test", 550, "5.1.1", "no such user here at all sorry", "bounced")]


def test_greeting_554_fails_permanently_then_quits():
    conn = ClientConnection("relay.test")
    events = feed(conn, b"554 5.7.1 go away\r\n")
    failed = first(events, ConnectionFailed)
    assert (failed.code, failed.enhanced, failed.text, failed.permanent) == (554, "5.7.1", "go away", True)
    assert sent(events) == b"QUIT\r\n"
    assert names(feed(conn, b"221 bye\r\n")) == ["Closed"]
    assert isinstance(conn.next_event(), Closed)


def test_greeting_421_closes_without_quit():
    conn = ClientConnection("relay.test")
    events = feed(conn, b"421 4.3.2 busy\r\n")
    assert names(events) == ["ConnectionFailed", "Closed"]
    assert events[0].permanent is False and events[0].code == 421


def test_garbage_is_a_protocol_error_not_an_exception():
    conn = ClientConnection("relay.test")
    events = feed(conn, b"HTTP/1.1 400 Bad Request\r\n")
    assert names(events) == ["ProtocolError", "Closed"]
    assert "malformed" in events[0].text


def test_reply_line_too_long():
    conn = ClientConnection("relay.test")
    events = feed(conn, b"220 " + b"x" * (sc.MAX_REPLY_LINE + 10))
    assert names(events) == ["ProtocolError", "Closed"]
    conn = ClientConnection("relay.test")
    events = feed(conn, b"220 " + b"x" * sc.MAX_REPLY_LINE + b"\r\n")
    assert names(events) == ["ProtocolError", "Closed"]


def test_reply_too_many_lines():
    conn = ClientConnection("relay.test")
    events = feed(conn, b"220-hi\r\n" * (sc.MAX_REPLY_LINES + 1) + b"220 end\r\n")
    assert names(events) == ["ProtocolError", "Closed"]
    assert "lines" in events[0].text


def test_reply_code_changing_mid_reply():
    conn = ClientConnection("relay.test")
    events = feed(conn, b"220-hi\r\n250 there\r\n")
    assert names(events) == ["ProtocolError", "Closed"]


def test_non_utf8_reply_text():
    conn = ClientConnection("relay.test")
    events = feed(conn, b"220 caf\xe9 \xff\r\n")
    assert first(events, Greeting).text == "caf? ?"


def test_unsolicited_reply_when_idle():
    conn = ready_conn()
    assert names(feed(conn, b"250 what\r\n")) == ["ProtocolError", "Closed"]
    conn = ready_conn()
    events = feed(conn, b"421 4.4.2 idle too long\r\n")
    assert names(events) == ["ConnectionFailed", "Closed"]


# --- EHLO / HELO -------------------------------------------------------------------
def test_capabilities_parsed():
    conn = ClientConnection("relay.test")
    feed(conn, GREETING)
    events = feed(conn, ehlo_reply("PIPELINING", "SIZE 35882577", "8BITMIME", "STARTTLS",
                                   "AUTH PLAIN LOGIN", "AUTH=CRAM-MD5", "ENHANCEDSTATUSCODES",
                                   "SMTPUTF8", "DSN"))
    caps = first(events, Capabilities)
    assert caps.esmtp and caps.pipelining and caps.eightbitmime and caps.starttls
    assert caps.size == 35882577 and caps.enhanced and caps.smtputf8
    assert caps.auth == ("PLAIN", "LOGIN", "CRAM-MD5")
    assert "DSN" in caps.keywords and caps.text == "mx.test greets relay.test"
    assert sent(events) == b"STARTTLS\r\n"


def test_size_without_number():
    conn = ready_conn("SIZE")
    assert conn.capabilities.size == 0
    assert ready_conn().capabilities.size is None


def test_ehlo_refused_falls_back_to_helo():
    for code in (b"500", b"502"):
        conn = ClientConnection("relay.test")
        feed(conn, GREETING)
        events = feed(conn, code + b" 5.5.1 what is EHLO\r\n")
        assert sent(events) == b"HELO relay.test\r\n"
        events = feed(conn, b"250 mx.test\r\n")
        assert names(events) == ["Capabilities", "Ready"]
        assert events[0].esmtp is False and events[0].pipelining is False


def test_ehlo_other_failure_fails_connection():
    conn = ClientConnection("relay.test")
    feed(conn, GREETING)
    events = feed(conn, b"550 5.7.1 not you\r\n")
    assert first(events, ConnectionFailed).permanent is True
    assert sent(events) == b"QUIT\r\n"


def test_helo_refused():
    conn = ClientConnection("relay.test")
    feed(conn, GREETING)
    feed(conn, b"502 no\r\n")
    events = feed(conn, b"451 4.3.0 later\r\n")
    assert first(events, ConnectionFailed).permanent is False


# --- transactions ----------------------------------------------------------------------
def test_pipelining_batch_and_reply_order():
    conn = ready_conn("PIPELINING")
    out = conn.start_transaction("q1", "a@x.test", ["b@y.test", "c@y.test"])
    assert out == (b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
                   b"RCPT TO:<c@y.test>\r\nDATA\r\n")
    assert conn.waiting_for() == sc.PHASE_MAIL
    assert feed(conn, b"250 ok\r\n") == []
    assert conn.waiting_for() == sc.PHASE_RCPT
    events = feed(conn, b"250 ok b\r\n550 5.1.1 no c\r\n354 go\r\n")
    assert names(events) == ["ReadyForBody"] and events[0].message_token == "q1"
    assert conn.waiting_for() == sc.PHASE_DATA_BLOCK
    assert deliver_body(conn, b"Hi\r\n") == b"Hi\r\n.\r\n"
    assert conn.waiting_for() == sc.PHASE_DATA_TERM
    events = feed(conn, b"250 2.0.0 queued as X\r\n")
    assert names(events) == ["TransactionResult", "Ready"]
    assert events[0].results == [("b@y.test", 250, "2.0.0", "queued as X", "sent"),
                                 ("c@y.test", 550, "5.1.1", "no c", "bounced")]


def test_lockstep_without_pipelining():
    conn = ready_conn()
    assert conn.start_transaction("q1", "", ["b@y.test", "c@y.test"]) == b"MAIL FROM:<>\r\n"
    assert sent(feed(conn, b"250 ok\r\n")) == b"RCPT TO:<b@y.test>\r\n"
    assert sent(feed(conn, b"250 ok\r\n")) == b"RCPT TO:<c@y.test>\r\n"
    assert sent(feed(conn, b"250 ok\r\n")) == b"DATA\r\n"
    assert conn.waiting_for() == sc.PHASE_DATA_INIT
    assert names(feed(conn, b"354 go\r\n")) == ["ReadyForBody"]
    conn.end_body()
    result = first(feed(conn, b"250 ok\r\n"), TransactionResult)
    assert [r[4] for r in result.results] == ["sent", "sent"]


def test_mixed_recipient_results():
    conn = ready_conn("PIPELINING", "ENHANCEDSTATUSCODES")
    conn.start_transaction("q1", "a@x.test", ["ok@y.test", "later@y.test", "never@y.test"])
    feed(conn, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n451 4.3.0 try later\r\n"
               b"550 5.1.1 unknown\r\n354 go\r\n")
    conn.encode_body_chunk(b"x\r\n")
    conn.end_body()
    result = first(feed(conn, b"250 2.0.0 done\r\n"), TransactionResult)
    assert result.results == [
        ("ok@y.test", 250, "2.0.0", "done", "sent"),
        ("later@y.test", 451, "4.3.0", "try later", "deferred"),
        ("never@y.test", 550, "5.1.1", "unknown", "bounced")]


def test_final_reply_applies_to_all_accepted():
    conn = ready_conn("PIPELINING")
    conn.start_transaction("q1", "a@x.test", ["b@y.test", "c@y.test"])
    feed(conn, b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    conn.end_body()
    result = first(feed(conn, b"452 4.3.1 full\r\n"), TransactionResult)
    assert [r[1:] for r in result.results] == [(452, "4.3.1", "full", "deferred")] * 2


def test_all_recipients_rejected_lockstep_sends_no_data():
    conn = ready_conn()
    conn.start_transaction("q1", "a@x.test", ["b@y.test"])
    feed(conn, b"250 ok\r\n")
    events = feed(conn, b"550 5.1.1 no\r\n")
    assert names(events) == ["TransactionResult", "Ready"] and sent(events) == b""
    assert events[0].results[0][4] == "bounced"
    # the open MAIL is reset before the next message
    assert conn.start_transaction("q2", "a@x.test", ["c@y.test"]) == b"RSET\r\n"
    assert sent(feed(conn, b"250 flushed\r\n")) == b"MAIL FROM:<a@x.test>\r\n"


def test_all_recipients_rejected_pipelined():
    conn = ready_conn("PIPELINING")
    conn.start_transaction("q1", "a@x.test", ["b@y.test", "c@y.test"])
    events = feed(conn, b"250 ok\r\n550 no\r\n451 later\r\n554 5.5.1 no valid recipients\r\n")
    result = first(events, TransactionResult)
    assert [r[4] for r in result.results] == ["bounced", "deferred"]
    assert [r[1] for r in result.results] == [550, 451]
    out = conn.start_transaction("q2", "a@x.test", ["d@y.test"])
    assert out.startswith(b"RSET\r\nMAIL FROM:<a@x.test>\r\n")


def test_354_with_no_accepted_recipient_sends_lone_dot():
    conn = ready_conn("PIPELINING")
    conn.start_transaction("q1", "a@x.test", ["b@y.test"])
    events = feed(conn, b"250 ok\r\n550 no\r\n354 go anyway\r\n")
    assert sent(events) == b".\r\n"
    events = feed(conn, b"554 no message\r\n")
    assert names(events) == ["TransactionResult", "Ready"]
    assert events[0].results[0][1] == 550


def test_mail_refused():
    conn = ready_conn("PIPELINING")
    conn.start_transaction("q1", "a@x.test", ["b@y.test", "c@y.test"])
    events = feed(conn, b"553 5.1.8 bad sender\r\n503 no\r\n503 no\r\n503 no\r\n")
    result = first(events, TransactionResult)
    assert [r[1:] for r in result.results] == [(553, "5.1.8", "bad sender", "bounced")] * 2
    assert conn.start_transaction("q2", "a@x.test", ["b@y.test"]).startswith(b"MAIL")
    conn = ready_conn()
    conn.start_transaction("q1", "a@x.test", ["b@y.test"])
    events = feed(conn, b"451 4.3.0 later\r\n")
    assert names(events) == ["TransactionResult", "Ready"]
    assert events[0].results[0][4] == "deferred"


def test_size_parameter():
    conn = ready_conn("SIZE 1000")
    assert conn.start_transaction("q1", "a@x.test", ["b@y.test"], size=999) == \
        b"MAIL FROM:<a@x.test> SIZE=999\r\n"
    conn = ready_conn()
    assert conn.start_transaction("q1", "a@x.test", ["b@y.test"], size=999) == \
        b"MAIL FROM:<a@x.test>\r\n"


def test_size_over_server_limit_bounces_locally():
    conn = ready_conn("SIZE 1000")
    assert conn.start_transaction("q1", "a@x.test", ["b@y.test"], size=1001) == b""
    events = drain(conn)
    assert names(events) == ["TransactionResult", "Ready"]
    assert events[0].results[0][1:3] == (sc.LOCAL_CODE, "5.3.4")
    assert events[0].results[0][4] == "bounced"


def test_8bit_message_with_8bitmime():
    conn = ready_conn("8BITMIME", "SIZE")
    out = conn.start_transaction("q1", "a@x.test", ["b@y.test"], size=5, eightbit=True)
    assert out == b"MAIL FROM:<a@x.test> SIZE=5 BODY=8BITMIME\r\n"


def test_8bit_message_to_7bit_server_bounces():
    conn = ready_conn("PIPELINING")
    assert conn.start_transaction("q1", "a@x.test", ["b@y.test", "c@y.test"], eightbit=True) == b""
    events = drain(conn)
    assert names(events) == ["TransactionResult", "Ready"] and sent(events) == b""
    for rcpt, code, enhanced, text, klass in events[0].results:
        assert (code, enhanced, klass) == (sc.LOCAL_CODE, "5.6.3", "bounced")
        assert "8BITMIME" in text
    # the connection stays usable
    assert conn.start_transaction("q2", "a@x.test", ["b@y.test"]).startswith(b"MAIL")


def test_smtputf8():
    conn = ready_conn("SMTPUTF8")
    out = conn.start_transaction("q1", "a@x.test", ["j\u00f6rg@y.test"])
    assert out == "MAIL FROM:<a@x.test> SMTPUTF8\r\n".encode()
    conn = ready_conn("PIPELINING")
    out = conn.start_transaction("q1", "a@x.test", ["j\u00f6rg@y.test", "b@y.test"])
    assert out == b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
    feed(conn, b"250 ok\r\n250 ok\r\n354 go\r\n")
    conn.end_body()
    result = first(feed(conn, b"250 ok\r\n"), TransactionResult)
    assert result.results[0][2] == "5.6.7" and result.results[0][4] == "bounced"
    assert result.results[1][4] == "sent"


def test_bad_addresses_are_never_sent():
    conn = ready_conn("PIPELINING")
    out = conn.start_transaction("q1", "a@x.test", ["b@y.test>\r\nDATA", "c@y.test"])
    assert out == b"MAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"
    conn = ready_conn()
    assert conn.start_transaction("q1", "a\r\nRSET", ["c@y.test"]) == b""
    assert drain(conn)[0].results[0][2] == "5.1.7"


def test_misuse_raises_state_error():
    conn = ClientConnection("relay.test")
    raises(ClientStateError, conn.start_transaction, "q", "a@x", ["b@y"])
    raises(ClientStateError, conn.encode_body_chunk, b"x")
    raises(ClientStateError, conn.tls_started)
    raises(ValueError, ClientConnection, "relay.test", tls="sometimes")
    raises(ValueError, ClientConnection, "bad name")
    conn = ready_conn()
    raises(ValueError, conn.start_transaction, "q", "a@x", [])


# --- body -------------------------------------------------------------------------------
def stuff_in_pieces(body, cuts, kind=bytes):
    conn = ready_conn("PIPELINING")
    conn.start_transaction("q1", "a@x.test", ["b@y.test"])
    feed(conn, b"250 ok\r\n250 ok\r\n354 go\r\n")
    out, last = [], 0
    for cut in cuts + [len(body)]:
        out.append(bytes(conn.encode_body_chunk(kind(body[last:cut]))))
        last = cut
    out.append(conn.end_body())
    return b"".join(out)


def test_dot_stuffing_split_at_every_position():
    body = b".start\r\nmid\r\n.\r\n..two\r\nend.\r\n."
    want = b"..start\r\nmid\r\n..\r\n...two\r\nend.\r\n..\r\n.\r\n"
    assert stuff_in_pieces(body, []) == want
    for i in range(len(body) + 1):
        assert stuff_in_pieces(body, [i]) == want, i
        for j in range(i, len(body) + 1, 3):
            assert stuff_in_pieces(body, [i, j]) == want, (i, j)


def test_dot_stuffing_of_reused_buffers_and_views():
    # delivery hands the spool's reused bytearray (or a memoryview): same bytes out
    body = b".start\r\nmid\r\n.\r\n..two\r\nend.\r\n."
    want = b"..start\r\nmid\r\n..\r\n...two\r\nend.\r\n..\r\n.\r\n"
    for kind in (bytearray, memoryview):
        for i in range(len(body) + 1):
            assert stuff_in_pieces(body, [i], kind) == want, (kind, i)
    conn = ready_conn("PIPELINING")
    conn.start_transaction("q1", "a@x.test", ["b@y.test"])
    feed(conn, b"250 ok\r\n250 ok\r\n354 go\r\n")
    plain = bytearray(b"no dot at any line start\r\n")
    assert conn.encode_body_chunk(plain) is plain      # nothing to stuff: not copied
    view = memoryview(plain)[:9]                        # a board's short last chunk
    assert conn.encode_body_chunk(view) is view
    assert conn.encode_body_chunk(memoryview(b"x\r\n.y\r\n")[:5]) == b"x\r\n..y"


def test_dot_stuffing_byte_by_byte():
    body = b"a\r\n.\r\n.b\r\n"
    assert stuff_in_pieces(body, list(range(1, len(body)))) == b"a\r\n..\r\n..b\r\n.\r\n"


def test_body_terminator():
    assert stuff_in_pieces(b"", []) == b".\r\n"
    assert stuff_in_pieces(b"x\r\n", []) == b"x\r\n.\r\n"
    assert stuff_in_pieces(b"x", []) == b"x\r\n.\r\n"


# --- STARTTLS -------------------------------------------------------------------------------
def test_tls_required_without_starttls_never_sends_mail():
    conn = ClientConnection("relay.test", tls="required")
    feed(conn, GREETING)
    events = feed(conn, ehlo_reply("PIPELINING", "8BITMIME"))
    failed = first(events, ConnectionFailed)
    assert failed.permanent is False and "TLS" in failed.text and failed.enhanced == "4.7.4"
    assert sent(events) == b"QUIT\r\n" and b"MAIL" not in sent(events)
    assert "Ready" not in names(events)
    raises(ClientStateError, conn.start_transaction, "q1", "a@x.test", ["b@y.test"])
    assert names(feed(conn, b"221 bye\r\n")) == ["Closed"]


def test_tls_required_and_starttls_refused():
    conn = ClientConnection("relay.test", tls="required")
    feed(conn, GREETING)
    assert sent(feed(conn, ehlo_reply("STARTTLS"))) == b"STARTTLS\r\n"
    events = feed(conn, b"454 4.7.0 TLS not available\r\n")
    assert first(events, ConnectionFailed).code == 454
    assert sent(events) == b"QUIT\r\n"


def test_starttls_refused_opportunistic_continues_in_clear():
    conn = ClientConnection("relay.test")
    feed(conn, GREETING)
    feed(conn, ehlo_reply("STARTTLS"))
    assert names(feed(conn, b"454 4.7.0 no\r\n")) == ["Ready"]


def test_starttls_response_injection_discarded():
    conn = ClientConnection("relay.test")
    feed(conn, GREETING)
    feed(conn, ehlo_reply("STARTTLS"))
    assert conn.waiting_for() == sc.PHASE_COMMAND
    events = feed(conn, b"220 2.0.0 go ahead\r\n250-injected\r\n250 PIPELINING\r\n")
    assert names(events) == ["NeedTLS"]
    assert conn.waiting_for() is None
    assert feed(conn, b"250 more plaintext before the handshake\r\n") == []
    assert conn.tls_started() == b"EHLO relay.test\r\n"
    assert conn.capabilities is None and conn.tls_active
    events = feed(conn, ehlo_reply("AUTH PLAIN"))
    caps = first(events, Capabilities)
    assert caps.tls_active and not caps.pipelining and not caps.starttls
    assert names(events) == ["Capabilities", "Ready"]


def test_tls_off_ignores_starttls():
    conn = ClientConnection("relay.test", tls="off")
    feed(conn, GREETING)
    events = feed(conn, ehlo_reply("STARTTLS"))
    assert names(events) == ["Capabilities", "Ready"]


def test_implicit_tls():
    conn = ClientConnection("relay.test", tls="required", tls_active=True)
    feed(conn, GREETING)
    events = feed(conn, ehlo_reply("STARTTLS", "PIPELINING"))
    assert names(events) == ["Capabilities", "Ready"]
    assert conn.start_transaction("q1", "a@x.test", ["b@y.test"]).startswith(b"MAIL")


# --- AUTH -----------------------------------------------------------------------------------
def auth_conn(*keywords, **kw):
    conn = ClientConnection("relay.test", tls_active=True,
                            credentials=("me@isp.test", PASSWORD), **kw)
    feed(conn, GREETING)
    return conn


def assert_no_password(events, conn):
    b64 = binascii.b2a_base64(PASSWORD.encode())[:-1].decode()
    for thing in list(events) + [conn, conn._credentials]:
        for text in (repr(thing), str(thing)):
            assert PASSWORD not in text and b64 not in text, text


def test_auth_plain_success():
    conn = auth_conn()
    events = feed(conn, ehlo_reply("AUTH LOGIN PLAIN"))
    want = b"AUTH PLAIN " + binascii.b2a_base64(b"\0me@isp.test\0" + PASSWORD.encode())[:-1]
    assert sent(events) == want + b"\r\n"
    more = feed(conn, b"235 2.7.0 ok\r\n")
    assert names(more) == ["Authenticated", "Ready"] and more[0].mechanism == "PLAIN"
    assert_no_password(events + more, conn)


def test_auth_login_success():
    conn = auth_conn()
    events = feed(conn, ehlo_reply("AUTH LOGIN"))
    assert sent(events) == b"AUTH LOGIN\r\n"
    step1 = feed(conn, b"334 VXNlcm5hbWU6\r\n")
    assert sent(step1) == binascii.b2a_base64(b"me@isp.test")[:-1] + b"\r\n"
    step2 = feed(conn, b"334 UGFzc3dvcmQ6\r\n")
    assert sent(step2) == binascii.b2a_base64(PASSWORD.encode())[:-1] + b"\r\n"
    done = feed(conn, b"235 ok\r\n")
    assert names(done) == ["Authenticated", "Ready"] and done[0].mechanism == "LOGIN"
    assert_no_password(events + step1 + step2 + done, conn)


def test_auth_failure_is_connection_level_deferral():
    for mech in ("PLAIN", "LOGIN"):
        conn = auth_conn()
        events = feed(conn, ehlo_reply("AUTH " + mech))
        if mech == "LOGIN":
            events += feed(conn, b"334 VXNlcm5hbWU6\r\n") + feed(conn, b"334 UGFzc3dvcmQ6\r\n")
        events += feed(conn, b"535 5.7.8 Authentication credentials invalid\r\n")
        failed = first(events, ConnectionFailed)
        assert (failed.code, failed.enhanced, failed.permanent) == (535, "5.7.8", False)
        assert failed.text == "Authentication credentials invalid"
        assert sent(events).endswith(b"QUIT\r\n") and b"MAIL" not in sent(events)
        assert_no_password(events, conn)


def test_auth_needs_tls_unless_allowed():
    conn = ClientConnection("relay.test", credentials=("me", PASSWORD))
    feed(conn, GREETING)
    events = feed(conn, ehlo_reply("AUTH PLAIN"))
    assert "without TLS" in first(events, ConnectionFailed).text
    assert b"AUTH" not in sent(events)
    conn = ClientConnection("relay.test", credentials=("me", PASSWORD), auth_without_tls=True)
    feed(conn, GREETING)
    assert sent(feed(conn, ehlo_reply("AUTH PLAIN"))).startswith(b"AUTH PLAIN ")


def test_auth_without_supported_mechanism():
    conn = auth_conn()
    events = feed(conn, ehlo_reply("AUTH CRAM-MD5"))
    assert first(events, ConnectionFailed).enhanced == "4.7.0"
    assert b"AUTH" not in sent(events)


def test_auth_after_starttls():
    conn = ClientConnection("relay.test", credentials=("me", PASSWORD))
    feed(conn, GREETING)
    feed(conn, ehlo_reply("STARTTLS", "AUTH PLAIN"))
    assert names(feed(conn, b"220 go\r\n")) == ["NeedTLS"]
    conn.tls_started()
    assert sent(feed(conn, ehlo_reply("AUTH PLAIN"))).startswith(b"AUTH PLAIN ")


# --- failures mid-session ---------------------------------------------------------------
def test_421_mid_session():
    conn = ready_conn("PIPELINING")
    conn.start_transaction("q1", "a@x.test", ["b@y.test", "c@y.test", "d@y.test"])
    events = feed(conn, b"250 ok\r\n250 ok\r\n550 no\r\n421 4.3.2 shutting down\r\n")
    assert names(events) == ["TransactionResult", "ConnectionFailed", "Closed"]
    assert events[0].results == [
        ("b@y.test", 421, "4.3.2", "shutting down", "deferred"),
        ("c@y.test", 550, None, "no", "bounced"),
        ("d@y.test", 421, "4.3.2", "shutting down", "deferred")]
    assert events[1].code == 421 and not events[1].permanent
    assert b"QUIT" not in sent(events)


def test_421_after_dot():
    conn = ready_conn()
    conn.start_transaction("q1", "a@x.test", ["b@y.test"])
    feed(conn, b"250 ok\r\n")
    feed(conn, b"250 ok\r\n")
    feed(conn, b"354 go\r\n")
    conn.end_body()
    events = feed(conn, b"421 4.4.2 bye\r\n")
    assert names(events) == ["TransactionResult", "ConnectionFailed", "Closed"]
    assert events[0].results[0][4] == "deferred"


def test_eof_mid_body():
    conn = ready_conn("PIPELINING")
    conn.start_transaction("q1", "a@x.test", ["b@y.test"])
    feed(conn, b"250 ok\r\n250 ok\r\n354 go\r\n")
    conn.encode_body_chunk(b"partial")
    events = feed(conn, b"")
    assert names(events) == ["TransactionResult", "ConnectionFailed", "Closed"]
    assert events[0].results[0][4] == "deferred" and events[1].permanent is False


def test_garbage_mid_transaction_defers():
    conn = ready_conn("PIPELINING")
    conn.start_transaction("q1", "a@x.test", ["b@y.test"])
    events = feed(conn, b"250 ok\r\nwhat?\r\n")
    assert names(events) == ["TransactionResult", "ProtocolError", "Closed"]
    assert events[0].results[0][4] == "deferred"


def test_eof_after_quit_is_a_clean_close():
    conn = ready_conn()
    assert conn.quit() == b"QUIT\r\n"
    assert conn.quit() == b""
    assert names(feed(conn, b"")) == ["Closed"]


# --- reuse and timeouts -------------------------------------------------------------------
def test_connection_reuse_for_two_messages():
    conn = ready_conn("PIPELINING", "8BITMIME")
    results = []
    for token in ("q1", "q2"):
        out = conn.start_transaction(token, "a@x.test", ["b@y.test"])
        assert out == b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
        assert names(feed(conn, b"250 ok\r\n250 ok\r\n354 go\r\n")) == ["ReadyForBody"]
        assert deliver_body(conn, b"body " + token.encode() + b"\r\n").endswith(b"\r\n.\r\n")
        events = feed(conn, b"250 queued\r\n")
        assert names(events) == ["TransactionResult", "Ready"]
        results.append(events[0])
    assert [r.message_token for r in results] == ["q1", "q2"]
    assert conn.quit() == b"QUIT\r\n"
    assert names(feed(conn, b"221 bye\r\n")) == ["Closed"]


def test_timeouts_by_phase():
    assert (sc.TIMEOUT_GREETING, sc.TIMEOUT_MAIL, sc.TIMEOUT_RCPT) == (300, 300, 300)
    assert (sc.TIMEOUT_DATA_INIT, sc.TIMEOUT_DATA_BLOCK, sc.TIMEOUT_DATA_TERM) == (120, 180, 600)
    conn = ClientConnection("relay.test")
    assert conn.timeout() == 300
    feed(conn, GREETING)
    feed(conn, ehlo_reply())
    assert conn.waiting_for() is None and conn.timeout() is None
    conn.start_transaction("q1", "a@x.test", ["b@y.test"])
    feed(conn, b"250 ok\r\n")
    assert conn.timeout() == sc.TIMEOUT_RCPT
    feed(conn, b"250 ok\r\n")
    assert conn.timeout() == sc.TIMEOUT_DATA_INIT
    feed(conn, b"354 go\r\n")
    assert conn.timeout() == sc.TIMEOUT_DATA_BLOCK
    conn.end_body()
    assert conn.timeout() == sc.TIMEOUT_DATA_TERM


def test_event_reprs():
    assert repr(Greeting(220, None, "hi")) == "Greeting(code=220, enhanced=None, text='hi')"
    assert repr(NeedTLS()) == "NeedTLS()"
    assert "permanent=True" in repr(ConnectionFailed(554, "5.7.1", "no", True))
    assert repr(Send(b"x", sensitive=True)).find("x") < 0
    assert isinstance(Authenticated("PLAIN"), sc.Event) and isinstance(Ready(), sc.Event)
    assert repr(ReadyForBody("q")) == "ReadyForBody(message_token='q')"
    assert repr(ProtocolError("x")) == "ProtocolError(text='x')"


def test_pipelining_many_recipients_in_bounded_batches():
    conn = ready_conn("PIPELINING")
    count = sc.MAX_PIPELINE_RCPTS + 3
    rcpts = ["r%d@y.test" % i for i in range(count)]
    out = conn.start_transaction("q1", "a@x.test", rcpts)
    assert out.count(b"RCPT TO:") == sc.MAX_PIPELINE_RCPTS and b"DATA" not in out
    events = feed(conn, b"250 ok\r\n" * sc.MAX_PIPELINE_RCPTS)
    assert events == []
    events = feed(conn, b"250 ok\r\n")
    rest = sent(events)
    assert rest.count(b"RCPT TO:") == 3 and rest.endswith(("RCPT TO:<r%d@y.test>\r\nDATA\r\n" % (count - 1)).encode())
    assert names(feed(conn, b"250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n")) == ["ReadyForBody"]
    conn.end_body()
    result = first(feed(conn, b"250 ok\r\n"), TransactionResult).results
    assert [r[4] for r in result] == ["sent"] * (count - 1) + ["bounced"]


def test_pipelining_batches_stop_when_mail_refused():
    conn = ready_conn("PIPELINING")
    rcpts = ["r%d@y.test" % i for i in range(sc.MAX_PIPELINE_RCPTS + 1)]
    conn.start_transaction("q1", "a@x.test", rcpts)
    events = feed(conn, b"452 4.3.1 full\r\n" + b"503 no\r\n" * sc.MAX_PIPELINE_RCPTS)
    assert names(events) == ["TransactionResult", "Ready"] and sent(events) == b""
    assert [r[4] for r in events[0].results] == ["deferred"] * len(rcpts)

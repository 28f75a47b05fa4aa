# CPython-only checks of the SMTP server core: hypothesis throws random byte
# streams in random splits at it (it never raises, its buffers stay bounded, every
# reply line carries a code and an RFC 3463 enhanced code), and smtplib, driven
# over a socketpair against the core, is happy with it.
import re
import smtplib
import socket
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meta1lite.proto import smtp_server as S

REPLY_LINE = re.compile(rb"^[2-5]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
BARE_REPLY_LINE = re.compile(rb"^\d\d\d[ -]")          # greeting, EHLO/HELO, 334
FRAGMENTS = [
    b"EHLO c.example\r\n", b"HELO c\r\n", b"MAIL FROM:<a@example.org>\r\n",
    b"MAIL FROM:<a@example.org> SIZE=99999999\r\n", b"RCPT TO:<b@example.org>\r\n",
    b'RCPT TO:<"t@d"@[192.0.2.1]>\r\n', b"RCPT TO:<@a,@b:c@d>\r\n", b"DATA\r\n", b"RSET\r\n",
    b"NOOP\r\n", b"VRFY x\r\n", b"HELP\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", b"*\r\n", b"=\r\n",
    b"QUIT\r\n", b".\r\n", b"\r\n.\r\n", b"\n.\n", b"\r.\r\n", b"\r\n.\n", b"..\r\n", b"\r",
    b"\n", b"\x00", b"x" * 600, b"y" * 1200 + b"\r\n", b"BDAT 1\r\n",
]
chunk = st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=64))
READ_LIMIT = 1024               # octets per receive_data, well below the test's max_buffer


def _check_reply(data, bare_ok):
    assert data.endswith(b"\r\n"), data
    for line in data[:-2].split(b"\r\n"):
        assert REPLY_LINE.match(line) or (bare_ok and BARE_REPLY_LINE.match(line)), data


def _decide(conn, event, choose):
    """Answer a decision event like an I/O layer would (choice drawn by hypothesis)."""
    if isinstance(event, S.MailFrom):
        return conn.accept_mail() if choose() else conn.reject_mail()
    if isinstance(event, S.RcptTo):
        return conn.accept_rcpt() if choose() else conn.reject_rcpt()
    if isinstance(event, S.DataStart):
        return conn.accept_data() if choose() else conn.reject_data()
    if isinstance(event, S.DataEnd) and event.ok:
        return conn.accept_message() if choose() else conn.reject_message()
    if isinstance(event, S.AuthRequest):
        return conn.accept_auth() if choose() else conn.reject_auth()
    return None


class Driver:
    def __init__(self, conn, choose):
        self.conn = conn
        self.choose = choose
        self.previous = None
        self.ends = 0

    def pump(self):
        conn = self.conn
        for _ in range(100000):
            event = conn.next_event()
            if event is S.NEED_DATA or event is S.PAUSED and conn.state != S.STARTTLS:
                return event
            if event is S.PAUSED or isinstance(event, S.StartTLS):
                conn.tls_started()
                continue
            self.check(event)
            if isinstance(event, S.Close):
                return event
        raise AssertionError("next_event never asked for data")

    def check(self, event):
        if isinstance(event, S.Reply):
            bare = isinstance(self.previous, S.Helo) or event.code == 334
            _check_reply(event.data, bare)
        elif isinstance(event, S.DataChunk):
            assert 0 < len(event.data) <= S.DATA_CHUNK + 2
            if self.conn.bare_lf == "normalize":
                plain = bytes(event.data).replace(b"\r\n", b"")
                assert b"\r" not in plain and b"\n" not in plain
        elif isinstance(event, S.DataEnd):
            self.ends += 1
        data = _decide(self.conn, event, self.choose)
        if data is not None:
            _check_reply(data, False)
        self.previous = event


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(chunk, max_size=40), cuts=st.lists(st.integers(1, 97), max_size=20),
       mode=st.sampled_from(["reject", "normalize"]), tls=st.booleans(),
       data=st.data())
def test_random_streams_never_break_the_core(parts, cuts, mode, tls, data):
    conn = S.ServerConnection("relay.test", max_message_size=5000, max_recipients=3,
                              bare_lf=mode, tls_available=tls, auth_available=True,
                              auth_requires_tls=not tls, max_bad_commands=50,
                              max_buffer=4096)
    driver = Driver(conn, lambda: data.draw(st.booleans()))
    stream = b"".join(parts)
    position = 0
    rest = [READ_LIMIT] * (len(stream) // READ_LIMIT + 1)   # an I/O layer reads in bounded pieces
    for cut in cuts + rest:
        piece = stream[position:position + cut]
        position += len(piece)
        if not piece:
            continue
        if driver.pump() is not S.NEED_DATA:
            return
        conn.receive_data(piece)
        assert conn.buffered() <= 4096
        result = driver.pump()
        if result is S.NEED_DATA:      # everything complete was consumed
            assert conn.buffered() < (3 if conn.state == S.DATA else conn.max_command_line)
        if isinstance(result, S.Close):
            return
    conn.receive_data(b"")
    assert isinstance(driver.pump(), S.Close)


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=300), cuts=st.lists(st.integers(1, 50), max_size=10))
def test_data_framing_never_ends_early(body, cuts):
    """Whatever the body, only the real CRLF.CRLF ends it; a bare-LF-free body
    without a line start dot comes back byte for byte."""
    conn = S.ServerConnection("relay.test", bare_lf="normalize")
    driver = Driver(conn, lambda: True)
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    driver.pump()
    chunks = []
    stream = body.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n"
    if stream.startswith(b"."):
        stream = b"." + stream
    position = 0
    original = driver.check

    def collect(event):
        if isinstance(event, S.DataChunk):
            chunks.append(bytes(event.data))    # valid until the next receive_data
        original(event)
    driver.check = collect
    for cut in cuts + [len(stream)]:
        piece = stream[position:position + cut]
        position += len(piece)
        if piece:
            conn.receive_data(piece)
            driver.pump()
    assert driver.ends == 1 and conn.state == S.GREETED
    if b"\r" not in body and b"\n" not in body:
        assert b"".join(chunks) == body + b"\r\n"


class SocketSMTP(smtplib.SMTP):
    def __init__(self, sock):
        self._pair = sock
        smtplib.SMTP.__init__(self)

    def _get_socket(self, host, port, timeout):
        return self._pair


def test_smtplib_is_happy_with_the_core():
    server_sock, client_sock = socket.socketpair()
    events = []

    def serve():
        conn = S.ServerConnection("relay.test", max_message_size=100000)
        server_sock.sendall(conn.greeting())
        while True:
            event = conn.next_event()
            if event is S.NEED_DATA:
                conn.receive_data(server_sock.recv(4096))
                continue
            if isinstance(event, S.DataChunk):      # valid until the next receive_data
                event = S.DataChunk(bytes(event.data))
            events.append(event)
            data = event.data if isinstance(event, S.Reply) else _decide(conn, event, lambda: True)
            if data:
                server_sock.sendall(data)
            if isinstance(event, S.Close):
                server_sock.close()
                return
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = SocketSMTP(client_sock)
    client.connect("relay.test", 25)
    refused = client.sendmail("a@example.org", ["b@example.org", "c@example.net"],
                              b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n")
    assert refused == {}
    assert client.has_extn("pipelining") and client.has_extn("size")
    client.quit()
    thread.join(5)
    mail = [e for e in events if isinstance(e, S.MailFrom)][0]
    assert mail.size is not None and mail.mailbox.address == "a@example.org"
    body = b"".join([e.data for e in events if isinstance(e, S.DataChunk)])
    assert body == b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n"
    assert [e for e in events if isinstance(e, S.DataEnd)][0].ok

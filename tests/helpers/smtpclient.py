# A small raw-socket SMTP client for tests: exact bytes on the wire, replies read
# with a deadline, optional source address (127.0.0.2 is outside relay_from in the
# tests) and a TLS upgrade on demand. CPython-only (the driver side). Must never
# interpret or fix up what a test sends: smuggling and injection tests depend on it.
import socket
import ssl

from helpers.daemon import UPY_HEAP

READ_TIMEOUT_S = 60          # generous: the daemon may run on a loaded machine
MAX_REPLY_LINES = 100


class Reply:
    """A complete SMTP reply: code (int), lines (list of str without the code)."""

    def __init__(self, code, lines):
        self.code = code
        self.lines = lines

    @property
    def text(self):
        return "\n".join(self.lines)

    def __repr__(self):
        return "Reply(%d, %r)" % (self.code, self.lines)


class Client:
    """One SMTP connection over a plain socket (and TLS once upgraded)."""

    def __init__(self, port, host="127.0.0.1", source="127.0.0.1", timeout=READ_TIMEOUT_S):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0))
        self.buf = b""
        self.host = host

    def send(self, data):
        """Write raw bytes (one sendall: one write as the test means it)."""
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed; pending %r" % self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def reply(self):
        """The next complete (possibly multi-line) reply."""
        lines = []
        for _ in range(MAX_REPLY_LINES):
            line = self._line()
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(int(line[:3]), lines)
        raise AssertionError("reply longer than %d lines" % MAX_REPLY_LINES)

    def cmd(self, line):
        """Send one command line (CRLF added) and return its reply."""
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def greeting_and_ehlo(self, name="client.test"):
        greeting = self.reply()
        assert greeting.code == 220, greeting
        ehlo = self.cmd("EHLO " + name)
        assert ehlo.code == 250, ehlo
        return ehlo

    def closed(self):
        """True once the server closed the connection (waits up to the timeout)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True

    def starttls(self, ctx, server_hostname="relay.test"):
        """Wrap the socket in TLS (after the 220 to STARTTLS); drops any plaintext
        already buffered, as a client must."""
        self.buf = b""
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def message(self, sender, rcpts, data):
        """MAIL, RCPT..., DATA, the data (already dot-stuffed, ending in CRLF), the
        dot; returns the reply to the final dot. Asserts the envelope is accepted."""
        r = self.cmd("MAIL FROM:<%s>" % sender)
        assert r.code == 250, r
        for rcpt in rcpts:
            r = self.cmd("RCPT TO:<%s>" % rcpt)
            assert r.code == 250, r
        r = self.cmd("DATA")
        assert r.code == 354, r
        self.send(data + b".\r\n")
        return self.reply()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def client_context(ca):
    """An ssl client context trusting the trustme CA `ca`."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


# --- the daemon and its spool, as the smtps tests use them ------------------------
# The relay needs ~400K of heap on the unix port (bytecode lives in the heap;
# measured: with 352K the first session is refused "out of memory", with 384K a
# session or a 5 MB DATA runs out, with 400K every test here passes).
SMTPS_HEAP = UPY_HEAP
STREAM_HEAP = "448K"        # the 5 MB message: only ~48K above the minimum
BIG_QUEUE = 64 * 1024 * 1024


def smtps_conf(tmp_path, port, smtps_extra="", top_extra="", relay_from="127.0.0.1/32",
               qmgr="", smar=""):
    """A config whose only route is a port nobody listens on: queued mail stays
    queued (deferred, retried in an hour), so the spool shows what smtps accepted."""
    from helpers.daemon import config_text, free_port
    dead = free_port()
    top = """%s
smar { route "*" { via = "[127.0.0.1]:%d"; } %s }
qmgr { retry_min = 1h; retry_max = 2h; max_queue_size = 64M; %s }
""" % (top_extra, dead, smar, qmgr)
    return config_text(str(tmp_path / "spool"), port, smtps_extra=smtps_extra, top_extra=top,
                       relay_from=relay_from)


def start_smtps(runtime, tmp_path, smtps_extra="", top_extra="", relay_from="127.0.0.1/32",
                qmgr="", heap=None, smar="", env=None, entry=None):
    """Start `meta1lite run` (or the shim script `entry`) on a fresh port; returns the
    started daemon.Daemon."""
    from helpers.daemon import Daemon, free_port
    heap = heap or SMTPS_HEAP
    port = free_port()
    conf = smtps_conf(tmp_path, port, smtps_extra, top_extra, relay_from, qmgr, smar)
    return Daemon(runtime, tmp_path, conf, port, heap=heap, env=env, entry=entry).start()


def queued(tmp_path):
    """{queue_id: (sender, [recipients], body bytes)} read through the spool API
    (call after the daemon stopped)."""
    from meta1lite.spool import Spool
    spool = Spool(str(tmp_path / "spool"), BIG_QUEUE, 100000, 0)
    spool.recover()
    found = {}
    for msg in spool.messages():
        body = b"".join(spool.read_body(msg.id))
        found[msg.id] = (msg.sender, [r.addr for r in msg.recipients], body)
    spool.close()
    return found


def assert_clean_log(daemon):
    """No trace of a crash or an exhausted heap in the daemon's log."""
    log = daemon.log()
    for bad in ("MemoryError", "out of memory", "Traceback", "session error"):
        assert bad not in log, "%s in the daemon log:\n%s" % (bad, log[-4000:])
    return log


def wait_sessions_ended(daemon, deadline_s=60):
    """Wait until every session the log shows as connected has disconnected (the
    harness's own probe connection included), so connection counts start at 0."""
    import time
    end = time.time() + deadline_s
    while time.time() < end:
        log = daemon.log()
        opened = log.count(": connect from")
        if opened >= 1 and opened == log.count(": disconnect from"):     # 1: the probe
            return
        time.sleep(0.05)
    raise AssertionError("sessions did not end:\n%s" % daemon.log()[-4000:])

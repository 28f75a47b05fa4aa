# A next hop / smarthost for tests, built on aiosmtpd (a real SMTP server in a
# thread on loopback). Owns: STARTTLS or implicit TLS with a given certificate,
# AUTH PLAIN/LOGIN against a dict of users, PIPELINING on request, scripted
# replies (per recipient, or the next N messages), and a record of everything it
# saw: connections, MAIL commands, AUTH attempts, delivered envelopes with their
# raw content. CPython-only; never used by the shared code.
#
#   with NextHop("127.0.0.1", port, cert=("cert.pem", "key.pem"),
#                require_starttls=True, users={"me": "secret"},
#                rcpt_replies={"fail@x.test": "550 5.1.1 no such user"}) as hop:
#       ... deliver to 127.0.0.1:port ...
#       hop.messages[0].mail_from, .rcpt_tos, .content (bytes, CRLF, unstuffed)
#       hop.connections, hop.mail_commands, hop.auth_attempts
#   hop.fail_next(1, "451 4.3.0 try again later")   # the next message: refused at DATA
#
# Ports: start(port=0) picks a free one (hop.port); MX tests bind 127.0.0.3 etc.
import asyncio
import socket
import ssl
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult

DEFAULT_DATA_REPLY = "250 2.0.0 Ok: queued"
TEMP_FAIL_REPLY = "451 4.3.0 try again later"


class Delivered:
    """One message the next hop accepted."""

    def __init__(self, mail_from, rcpt_tos, content, tls, login, peer):
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self.content = content
        self.tls = tls
        self.login = login
        self.peer = peer

    def __repr__(self):
        return "Delivered(%r -> %r, %d bytes)" % (self.mail_from, self.rcpt_tos, len(self.content))


class _Handler:
    def __init__(self, hop):
        self.hop = hop

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.hop.pipelining:
            responses.insert(1, "250-PIPELINING")
        if not self.hop.eightbitmime:
            responses = [r for r in responses if r[4:] != "8BITMIME"]
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.hop.lock:
            self.hop.mail_commands.append(address)
            self.hop.mail_options.append(list(mail_options))
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.hop.rcpt_replies.get(address.lower())
        if reply and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return reply or "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        hop = self.hop
        if hop.slow_after and len(hop.messages) >= hop.slow_after[0]:
            await asyncio.sleep(hop.slow_after[1])      # a slow reply to the final dot
        with hop.lock:
            if hop.failures_left > 0:
                hop.failures_left -= 1
                return hop.failure_reply
            login = getattr(session, "nexthop_login", None)
            hop.messages.append(Delivered(envelope.mail_from, list(envelope.rcpt_tos),
                                          bytes(envelope.original_content or envelope.content),
                                          session.ssl is not None or hop.implicit_tls, login,
                                          session.peer))
        return hop.data_reply


class _CountingSMTP(SMTP):
    def connection_made(self, transport):
        with self.event_handler.hop.lock:
            self.event_handler.hop.connections += 1
        super().connection_made(transport)


class _Controller(Controller):
    def factory(self):
        return _CountingSMTP(self.handler, **self.SMTP_kwargs)


class NextHop:
    """An aiosmtpd next hop on host:port; a context manager (start/stop).

    cert: (certificate path, key path) for STARTTLS (or implicit TLS with
    implicit_tls=True); require_starttls: refuse MAIL before STARTTLS; users:
    {login: password} to offer AUTH PLAIN/LOGIN (only after TLS); rcpt_replies:
    {address: "550 5.1.1 ..."} replies at RCPT; pipelining: advertise PIPELINING;
    data_reply: the reply to the final dot; slow_after: (count, seconds): once count
    messages arrived, each final dot's reply waits seconds."""

    def __init__(self, host="127.0.0.1", port=0, cert=None, require_starttls=False, users=None,
                 rcpt_replies=None, pipelining=False, implicit_tls=False,
                 data_reply=DEFAULT_DATA_REPLY, eightbitmime=True, slow_after=None):
        self.host = host
        self.slow_after = slow_after    # (count, seconds): later final dots wait
        self.port = port or free_port(host)
        self.cert = cert
        self.require_starttls = require_starttls
        self.users = users
        self.rcpt_replies = dict((k.lower(), v) for k, v in (rcpt_replies or {}).items())
        self.pipelining = pipelining
        self.implicit_tls = implicit_tls
        self.data_reply = data_reply
        self.lock = threading.Lock()
        self.messages = []
        self.mail_commands = []
        self.mail_options = []          # the parameters of each MAIL (BODY=8BITMIME, ...)
        self.eightbitmime = eightbitmime    # False: EHLO does not offer 8BITMIME
        self.auth_attempts = []
        self.connections = 0
        self.failures_left = 0
        self.failure_reply = TEMP_FAIL_REPLY
        self._controller = None

    def fail_next(self, count=1, reply=TEMP_FAIL_REPLY):
        """Refuse the next `count` messages at the final dot with `reply`."""
        with self.lock:
            self.failures_left = count
            self.failure_reply = reply

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode()
        password = auth_data.password.decode()
        ok = self.users is not None and self.users.get(login) == password
        with self.lock:
            self.auth_attempts.append((login, ok))
        if ok:
            session.nexthop_login = login
        return AuthResult(success=ok, handled=False)

    def _tls_context(self):
        if not self.cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert[0], self.cert[1])
        return ctx

    def start(self):
        """Start serving in a background thread; returns self."""
        ctx = self._tls_context()
        kwargs = {"hostname": self.host, "port": self.port, "ident": "nexthop test server",
                  "data_size_limit": 10 * 1024 * 1024}
        if self.implicit_tls:
            kwargs["ssl_context"] = ctx
        elif ctx is not None:
            kwargs["tls_context"] = ctx
            kwargs["require_starttls"] = self.require_starttls
        if self.users is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_require_tls"] = ctx is not None and not self.implicit_tls
        self._controller = _Controller(_Handler(self), **kwargs)
        self._controller.start()
        with self.lock:
            self.connections = 0            # the controller's own readiness probe
        return self

    def stop(self):
        """Stop the server and its thread."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on right now on host."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]

# meta1lite.smtps.policy - smtps's decisions about clients and recipients: who may
# relay (relay_from, AUTH), which recipients an outsider may reach (local domains
# that the aliases know), and the per-client message rate.
#
# Owns: the relay verdict for a parsed RCPT mailbox and the sliding-minute rate
# table. Must never: let a client outside relay_from (and not authenticated) reach a
# non-local domain by any path form - source routes, `%`, `!`, a quoted `@`, or an
# address literal (smar treats no literal as local, so accepting one relays); grow
# without bound; do I/O.
from meta1lite import compat, netaddr
from meta1lite.const import const
from meta1lite.proto import replies

RATE_WINDOW_S = const(60)       # max_messages_per_client_per_minute counts over this
# bound of the per-client rate table (beyond it: clients silent for two windows are
# forgotten first, then the oldest entries; arbitrary ones on MicroPython).
# MicroPython: 64, whose table grows to 1.2K (a 256-client table's last resize needs
# 4.7K in one piece, which a heap fragmented by the clients' own entries may lack:
# seen at 192K on the unix port, with 104K free in pieces of at most 2K)
MAX_TRACKED_CLIENTS = 64 if compat.MICROPYTHON else 256


class RelayPolicy:
    """The relay decision of one configuration (smtps options; smar knows which
    domains and addresses are ours)."""

    def __init__(self, opts, smar):
        self.relay_from = opts["relay_from"]
        self.smar = smar
        self.last_ip = None         # the client address last matched (asked per recipient)
        self.last_trusted = False   # and whether it is in relay_from

    def trusted(self, ip, authenticated):
        """May this client relay to any domain?"""
        if authenticated:
            return True
        if ip != self.last_ip:
            self.last_ip, self.last_trusted = ip, netaddr.match_any(self.relay_from, ip)
        return self.last_trusted

    def rcpt_verdict(self, mailbox, ip, authenticated):
        """None to accept the recipient, else the refusal (a reply of proto/replies.py)."""
        trusted = self.trusted(ip, authenticated)
        if not trusted and (mailbox.relay_trick or mailbox.is_literal):
            return replies.RELAY_DENIED
        if self.smar.is_local(mailbox.domain):
            return self.local_verdict(mailbox)
        return None if trusted else replies.RELAY_DENIED

    def local_verdict(self, mailbox):
        """Local addresses are accepted only where smar's aliases know them."""
        if not mailbox.relay_trick and self.smar.knows_local(mailbox.address):
            return None
        return replies.UNKNOWN_USER


class RateLimiter:
    """Messages per client address in a sliding minute (two fixed windows, the
    older one weighted by how much of it still overlaps): constant time and three
    numbers per client, in a bounded table."""

    def __init__(self, per_minute):
        self.per_minute = per_minute
        self.windows = {}           # client -> [start of current window, previous, current]

    def over(self, client):
        """True if client already sent its messages of the sliding minute (counts
        nothing: a refused MAIL is no message)."""
        if not self.per_minute:
            return False
        now = compat.monotonic()
        entry = self.windows.get(client)
        if entry is None:
            return False
        _advance(entry, now)
        overlap = 1 - (now - entry[0]) / RATE_WINDOW_S
        return entry[1] * overlap + entry[2] >= self.per_minute

    def count(self, client):
        """Count one accepted message for client."""
        if not self.per_minute:
            return
        now = compat.monotonic()
        entry = self.windows.get(client)
        if entry is None:
            if len(self.windows) >= MAX_TRACKED_CLIENTS:
                self._forget_idle(now)
            entry = self.windows[client] = [now, 0, 0]
        _advance(entry, now)
        entry[2] += 1

    def allow(self, client):
        """over() then count(): False if over the limit, else counts one message."""
        if self.over(client):
            return False
        self.count(client)
        return True

    def _forget_idle(self, now):
        for client in list(self.windows):
            if now - self.windows[client][0] >= 2 * RATE_WINDOW_S:
                del self.windows[client]
        while len(self.windows) >= MAX_TRACKED_CLIENTS:
            del self.windows[next(iter(self.windows))]


def _advance(entry, now):
    passed = int((now - entry[0]) // RATE_WINDOW_S)
    if passed >= 1:
        entry[1] = entry[2] if passed == 1 else 0
        entry[2] = 0
        entry[0] += passed * RATE_WINDOW_S

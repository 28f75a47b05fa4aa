# meta1lite.relaypolicy - smtps's decisions about clients and recipients: who may
# relay (relay_from, AUTH), which recipients an outsider may reach (local domains
# that the aliases know), and the per-client message rate.
#
# Owns: the relay verdict for a parsed RCPT mailbox and the sliding-minute rate
# table. Must never: let a client outside relay_from (and not authenticated) reach a
# non-local domain by any path form - source routes, `%`, `!`, a quoted `@`, or an
# address literal (smar treats no literal as local, so accepting one relays); grow
# without bound; do I/O.
from meta1lite import compat, netaddr
from meta1lite.proto import replies

RATE_WINDOW_S = 60              # max_messages_per_client_per_minute counts over this
MAX_TRACKED_CLIENTS = 256       # bound of the per-client rate table


class RelayPolicy:
    """The relay decision of one configuration (smtps options, hostname, smar)."""

    def __init__(self, opts, hostname, smar=None):
        self.relay_from = opts["relay_from"]
        self.hostname = hostname.lower().rstrip(".")
        self.local_domains = [d.lower().rstrip(".") for d in opts["local_domains"]]
        self.smar = smar

    def trusted(self, ip, authenticated):
        """May this client relay to any domain?"""
        return bool(authenticated) or netaddr.match_any(self.relay_from, ip)

    def is_local_domain(self, domain):
        """Our hostname or one of smtps.local_domains."""
        return domain == self.hostname or domain in self.local_domains

    def rcpt_verdict(self, mailbox, ip, authenticated):
        """None to accept the recipient, else the (code, enhanced, text) refusal."""
        trusted = self.trusted(ip, authenticated)
        local = not mailbox.domain or self.is_local_domain(mailbox.domain)
        if not trusted and (mailbox.relay_trick or mailbox.is_literal):
            return replies.RELAY_DENIED
        if local:
            return self.local_verdict(mailbox)
        return None if trusted else replies.RELAY_DENIED

    def local_verdict(self, mailbox):
        """Local addresses are accepted only where smar's aliases know them."""
        if self.smar is not None and not mailbox.relay_trick \
                and self.smar.knows_local(mailbox.address):
            return None
        return replies.UNKNOWN_USER


class RateLimiter:
    """Messages per client address in a sliding minute, with a bounded table."""

    def __init__(self, per_minute):
        self.per_minute = per_minute
        self.stamps = {}

    def allow(self, client):
        """Count one message for client; False if over the limit."""
        if not self.per_minute:
            return True
        now = compat.monotonic()
        recent = [t for t in self.stamps.get(client, ()) if now - t < RATE_WINDOW_S]
        if len(recent) >= self.per_minute:
            self.stamps[client] = recent
            return False
        if client not in self.stamps and len(self.stamps) >= MAX_TRACKED_CLIENTS:
            self._forget_idle(now)
        recent.append(now)
        self.stamps[client] = recent
        return True

    def _forget_idle(self, now):
        for client in list(self.stamps):
            if not [t for t in self.stamps[client] if now - t < RATE_WINDOW_S]:
                del self.stamps[client]
        while len(self.stamps) >= MAX_TRACKED_CLIENTS:
            del self.stamps[next(iter(self.stamps))]

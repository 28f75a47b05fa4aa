# meta1lite.smar.resolver - the address resolver (MeTA1's smar): local domains,
# aliases, routes and next hops.
#
# Owns: which domains are ours, alias expansion (smar/aliases.py), the choice of a
# Route for (sender, recipient) (smar/routes.py), and turning a route into the
# list of Hops to try (MX per RFC 5321 section 5 through smar/dnsresolve.py, or
# the configured relay; dnsresolve and its Resolver are made at the first name
# lookup: a board relaying to address literals never takes their heap). Must never:
# bounce mail because a configured relay cannot be found (that is our
# configuration, not the recipient's domain: temporary).
from meta1lite.smar import aliases as aliasfile
from meta1lite.smar import dnsbase
from meta1lite.smar.aliases import UnknownAddress  # noqa: F401 - part of smar's API
from meta1lite.smar.routes import (
    DEFAULT_ROUTE,
    MAX_HOPS,
    VIA_DIRECT,
    VIA_MX,
    Hop,
    match_domain,
    match_sender,
    route_from_config,
)

# smar.inet_protocols: the address families next hops are looked up in (Postfix's
# name); None: both
INET_PROTOCOLS = {"all": None, "ipv4": (dnsbase.FAMILY_INET,), "ipv6": (dnsbase.FAMILY_INET6,)}


class AddressResolver:
    """smar: local domains, aliases and routes from cfg, next hops through DNS.

    resolver: a dnsresolve.Resolver; by default one for smar.nameservers with
    smar.dns_timeout (dnspython on CPython, the codec resolver on MicroPython), made
    at the first name lookup."""

    def __init__(self, cfg, resolver=None):
        self.resolver = resolver
        self.own_resolver = resolver is None
        self.reload(cfg)

    def reload(self, cfg):
        """Apply a (new) configuration: domains, aliases, routes, credentials, DNS."""
        self.cfg = cfg
        smar = cfg["smar"]
        if self.own_resolver:
            self.resolver = None            # made again at the next name lookup
        self.families = INET_PROTOCOLS[smar.get("inet_protocols") or "all"]
        self.hostname = cfg["hostname"].lower().rstrip(".")
        self.local_domains = [d.lower().rstrip(".") for d in cfg["smtps"]["local_domains"]]
        table = aliasfile.load(smar["aliases"]) if smar.get("aliases") else {}
        self.aliases = aliasfile.Aliases(table, self.is_local)
        self.routes = self._routes(smar.get("route"), cfg)
        self.sender_routes = self._routes(smar.get("sender_route"), cfg)
        if DEFAULT_ROUTE not in self.routes:
            self.routes[DEFAULT_ROUTE] = route_from_config(DEFAULT_ROUTE, {}, cfg)

    @staticmethod
    def _routes(labelled, cfg):
        table = {}
        for label, opts in labelled or ():
            table[label.lower()] = route_from_config(label, opts, cfg)
        return table

    # --- local addresses ---
    def is_local(self, domain):
        """True for our hostname, smtps.local_domains, and '' (an unqualified address)."""
        domain = (domain or "").lower().rstrip(".")
        return domain == "" or domain == self.hostname or domain in self.local_domains

    def knows_local(self, address):
        """True if the aliases file has this address (its local part or the whole of it)."""
        return self.aliases.knows(address)

    def expand(self, address):
        """Addresses to deliver to; a local address without an alias raises UnknownAddress."""
        return self.aliases.expand(address)

    # --- routes ---
    def route(self, sender, rcpt):
        """The Route for a message from sender to rcpt (sender_route first)."""
        domain = aliasfile.split_address(rcpt)[1]
        found = match_sender(self.sender_routes, sender or "") if self.sender_routes else None
        if found is None:
            found = match_domain(self.routes, domain)
        return found.for_domain(domain)

    async def next_hops(self, route, domain):
        """Hops to try in order; raises NullMX, PermanentDNSError or TemporaryDNSError."""
        if route.via == VIA_MX:
            return await self._mx_hops(domain, route.port)
        try:
            if route.via == VIA_DIRECT:
                return await self._host_hops(route.host, route.port)
            return await self._mx_hops(route.host, route.port)
        except dnsbase.PermanentDNSError as exc:
            raise dnsbase.TemporaryDNSError("relay %s: %s" % (route.key, exc))

    async def _mx_hops(self, domain, port):
        records = await self._dns().resolve_mx(domain)
        if not records:                          # no MX: the domain's own addresses
            hops = await self._host_hops(domain, port)
            if not hops:
                raise dnsbase.PermanentDNSError("%s: no MX and no address record" % domain)
            return hops
        hops, errors = [], []
        for _, host in records:
            try:
                hops.extend(await self._host_hops(host, port))
            except dnsbase.DNSLookupError as exc:
                errors.append(exc)
            if len(hops) >= MAX_HOPS:
                break
        if hops:
            return hops[:MAX_HOPS]
        return _no_hops(domain, errors)

    def _dns(self):
        if self.resolver is None:
            from meta1lite.smar import dnsresolve
            self.resolver = dnsresolve.for_config(self.cfg["smar"])
        return self.resolver

    async def _host_hops(self, host, port):
        literal = dnsbase.ip_literal(host)
        if literal:                              # an address literal: no DNS at all
            if self.families is not None and literal[0] not in self.families:
                return []                        # inet_protocols leaves its family out
            return [Hop(host, host, port)]
        found = await self._dns().resolve_addresses(host, self.families)
        return [Hop(host, ip, port) for _, ip in found[:MAX_HOPS]]


def _no_hops(domain, errors):
    """Raise the error for MX hosts that all failed to resolve (temporary wins)."""
    for exc in errors:
        if isinstance(exc, dnsbase.TemporaryDNSError):
            raise dnsbase.TemporaryDNSError("%s: MX hosts unresolvable: %s" % (domain, exc))
    raise dnsbase.PermanentDNSError("%s: no MX host has an address" % domain)

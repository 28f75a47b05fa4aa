# meta1lite.smar - the address resolver: local domains, aliases, routes and next hops.
#
# Owns: which domains are ours, alias expansion (meta1lite.aliases), the choice of
# a Route for (sender, recipient) from smar.sender_route and smar.route, the route's
# TLS/AUTH/rewrite settings (credentials read from their password_file once, at
# load), and turning a route into the list of Hops to try (MX per RFC 5321 section
# 5 through dnsresolve, or the configured relay). Must never: log or expose a
# password (Route's repr hides it), bounce mail because a configured relay cannot
# be found (that is our configuration, not the recipient's domain: temporary), or
# depend on dict order (routes keep the file's order in lists).
from meta1lite import aliases as aliasfile
from meta1lite import compat, dnsresolve, netaddr
from meta1lite.aliases import UnknownAddress  # noqa: F401 - part of smar's API

LOG = "smar"
MAX_HOPS = 10                # addresses tried for one destination (all MX hosts together)
DEFAULT_ROUTE = "*"
VIA_MX = "mx"
VIA_DIRECT = "direct"
VIA_LOOKUP = "lookup"
DEFAULT_TLS = "opportunistic"
DEFAULT_VIA_PORT = 25
_ROUTE_FIELDS = ("label", "via", "host", "port", "tls", "tls_verify", "ca_file",
                 "credentials", "rewrite_sender", "rewrite_from_header", "domain", "error")


def parse_via(value):
    """('mx', None, None) | ('direct', host, port) for '[host]:port' | ('lookup', host, port).

    The value was validated by conf (confschema is not kept in memory after start-up)."""
    if value.lower() == VIA_MX:
        return (VIA_MX, None, None)
    kind = VIA_DIRECT if value.startswith("[") else VIA_LOOKUP
    if kind == VIA_DIRECT:
        close = value.find("]")
        host, rest = value[1:close], value[close + 1:]
    else:
        host, _, rest = value.partition(":")
        rest = ":" + rest if rest else ""
    port = int(rest[1:]) if rest[1:] else DEFAULT_VIA_PORT
    return (kind, host, port)


class Hop:
    """One address to connect to: host (for TLS SNI, verification and logs), ip, port."""

    def __init__(self, host, ip, port):
        self.host = host
        self.ip = ip
        self.port = port

    def __repr__(self):
        return "Hop(%s[%s]:%d)" % (self.host, self.ip, self.port)

    def __eq__(self, other):
        return isinstance(other, Hop) and (self.host, self.ip, self.port) == \
            (other.host, other.ip, other.port)

    def __hash__(self):
        return hash((self.host, self.ip, self.port))

    def relay(self):
        """'host[ip]:port' as Postfix logs relay=."""
        return "%s[%s]:%d" % (self.host, self.ip, self.port)


class Route:
    """How mail for one destination leaves: see the module header and design.md.

    label: the route's pattern; via: 'mx' | 'direct' | 'lookup'; host, port: the
    relay (host None for mx, whose port is smtpc.port); tls: 'opportunistic' |
    'required' | 'off'; tls_verify; ca_file; credentials: None or (user, password);
    rewrite_sender; rewrite_from_header; key: the destination's name for
    concurrency and logs; domain: the recipient domain (via mx) or None; error:
    None, or why this route cannot be used now (e.g. an unreadable password_file:
    smtpc defers its mail)."""

    def __init__(self, label=DEFAULT_ROUTE, via=VIA_MX, host=None, port=DEFAULT_VIA_PORT,
                 tls=DEFAULT_TLS, tls_verify=True, ca_file=None, credentials=None,
                 rewrite_sender=None, rewrite_from_header=False, domain=None, error=None):
        self.label = label
        self.via = via
        self.host = host
        self.port = port
        self.tls = tls
        self.tls_verify = tls_verify
        self.ca_file = ca_file
        self.credentials = credentials
        self.rewrite_sender = rewrite_sender
        self.rewrite_from_header = rewrite_from_header
        self.domain = domain
        self.error = error
        self.key = self._key()

    def _key(self):
        if self.via == VIA_DIRECT:
            return "[%s]:%d" % (self.host, self.port)
        if self.via == VIA_LOOKUP:
            return "%s:%d" % (self.host, self.port)
        return "mx:%s" % (self.domain or "")

    def for_domain(self, domain):
        """This route for a recipient domain (via mx: its own key 'mx:DOMAIN')."""
        if self.via != VIA_MX or domain == self.domain:
            return self
        fields = {}
        for name in _ROUTE_FIELDS:
            fields[name] = getattr(self, name)
        fields["domain"] = domain
        return Route(**fields)

    def __repr__(self):
        user = self.credentials[0] if self.credentials else None
        return "Route(%r, key=%s, tls=%s, auth=%r)" % (self.label, self.key, self.tls, user)


def route_from_config(label, opts, cfg):
    """A Route from one route/sender_route section (opts) and cfg's smtpc section."""
    smtpc = cfg["smtpc"]
    via, host, port = parse_via(opts.get("via") or VIA_MX)
    if via == VIA_MX:
        port = smtpc["port"]
    route = Route(label, via, host, port, opts.get("tls") or smtpc.get("tls") or DEFAULT_TLS,
                  opts.get("tls_verify", True), smtpc.get("ca_file"), None,
                  opts.get("rewrite_sender"), bool(opts.get("rewrite_from_header")))
    if opts.get("auth"):
        route.credentials, route.error = _credentials(label, opts["auth"], smtpc)
    return route


def _credentials(label, name, smtpc):
    """((user, password), None) for a credentials name, or (None, error text)."""
    for cred_label, cred in smtpc.get("credentials") or ():
        if cred_label == name:
            try:
                with open(cred["password_file"]) as f:
                    return (cred["user"], f.readline().rstrip("\r\n")), None
            except OSError as exc:
                return None, _logged("credentials %s: cannot read password_file %s: %s"
                                     % (name, cred["password_file"], exc))
    return None, _logged("route %s: no smtpc credentials named %s" % (label, name))


def _logged(text):
    compat.log.log("error", LOG, text)
    return text


def _match_sender(routes, sender):
    """The sender_route for an envelope sender: whole address, '*@domain' / '@domain', '*'."""
    local, at, domain = sender.rpartition("@")
    domain = domain.lower().rstrip(".") if at else ""
    wanted = []
    if at:
        wanted.append(("%s@%s" % (local, domain)).lower())
        wanted.append("*@" + domain)
        wanted.append("@" + domain)
    wanted.append(DEFAULT_ROUTE)
    return _first(routes, wanted)


def _match_domain(routes, domain):
    """The route for a recipient domain: exact, then '.parent' (subdomains only), then '*'."""
    wanted = [domain]
    labels = domain.split(".")
    for i in range(1, len(labels)):
        wanted.append("." + ".".join(labels[i:]))
    wanted.append(DEFAULT_ROUTE)
    return _first(routes, wanted)


def _first(routes, wanted):
    for pattern in wanted:
        route = routes.get(pattern)
        if route is not None:
            return route
    return None


class AddressResolver:
    """smar: local domains, aliases and routes from cfg, next hops through DNS.

    resolver: a dnsresolve.Resolver; by default one for smar.nameservers with
    smar.dns_timeout (dnspython on CPython, the codec resolver on MicroPython)."""

    def __init__(self, cfg, resolver=None):
        self.resolver = resolver
        self.own_resolver = resolver is None
        self.reload(cfg)

    def reload(self, cfg):
        """Apply a (new) configuration: domains, aliases, routes, credentials, DNS."""
        self.cfg = cfg
        smar = cfg["smar"]
        if self.own_resolver:
            self.resolver = dnsresolve.Resolver(smar.get("nameservers") or None,
                                                timeout_s=smar.get("dns_timeout") or 5)
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
        found = _match_sender(self.sender_routes, sender or "") if self.sender_routes else None
        if found is None:
            found = _match_domain(self.routes, domain)
        return found.for_domain(domain)

    async def next_hops(self, route, domain):
        """Hops to try in order; raises NullMX, PermanentDNSError or TemporaryDNSError."""
        if route.via == VIA_MX:
            return await self._mx_hops(domain, route.port)
        try:
            if route.via == VIA_DIRECT:
                return await self._host_hops(route.host, route.port)
            return await self._mx_hops(route.host, route.port)
        except dnsresolve.PermanentDNSError as exc:
            raise dnsresolve.TemporaryDNSError("relay %s: %s" % (route.key, exc))

    async def _mx_hops(self, domain, port):
        records = await self.resolver.resolve_mx(domain)
        if not records:                          # no MX: the domain's own addresses
            hops = await self._host_hops(domain, port)
            if not hops:
                raise dnsresolve.PermanentDNSError("%s: no MX and no address record" % domain)
            return hops
        hops, errors = [], []
        for _, host in records:
            try:
                hops.extend(await self._host_hops(host, port))
            except dnsresolve.DNSLookupError as exc:
                errors.append(exc)
            if len(hops) >= MAX_HOPS:
                break
        if hops:
            return hops[:MAX_HOPS]
        return _no_hops(domain, errors)

    async def _host_hops(self, host, port):
        if _is_ip(host):                         # an address literal: no DNS at all
            return [Hop(host, host, port)]
        found = await self.resolver.resolve_addresses(host)
        return [Hop(host, ip, port) for _, ip in found[:MAX_HOPS]]


def _is_ip(text):
    try:
        netaddr.parse_ip(text)
        return True
    except ValueError:
        return False


def _no_hops(domain, errors):
    """Raise the error for MX hosts that all failed to resolve (temporary wins)."""
    for exc in errors:
        if isinstance(exc, dnsresolve.TemporaryDNSError):
            raise dnsresolve.TemporaryDNSError("%s: MX hosts unresolvable: %s" % (domain, exc))
    raise dnsresolve.PermanentDNSError("%s: no MX host has an address" % domain)

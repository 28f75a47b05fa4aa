# meta1lite.smar.routes - how mail leaves: Route (a route/sender_route section with
# its TLS, AUTH and rewrite settings), Hop (one address to connect to) and the
# choice of a route for a recipient domain or an envelope sender.
#
# Owns: parsing `via`, reading a route's credentials from their password_file once
# (at load), and the matching order (exact, .parent, "*"). Must never: log or
# expose a password (Route's repr hides it), or depend on dict order.
from meta1lite import compat
from meta1lite.const import const

LOG = const("smar")
MAX_HOPS = const(10)         # addresses tried for one destination (all MX hosts together)
DEFAULT_ROUTE = const("*")
VIA_MX = const("mx")
VIA_DIRECT = const("direct")
VIA_LOOKUP = const("lookup")
DEFAULT_TLS = const("opportunistic")
DEFAULT_VIA_PORT = const(25)
_ROUTE_FIELDS = ("label", "via", "host", "port", "tls", "tls_verify", "ca_file",
                 "credentials", "rewrite_sender", "rewrite_from_header", "domain", "error")


def parse_via(value):
    """('mx', None, None) | ('direct', host, port) for '[host]:port' | ('lookup', host, port).

    The value was validated by conf (conf.schema is not kept in memory after start-up)."""
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
    """How mail for one destination leaves: see the module header and docs/design.md.

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


def match_sender(routes, sender):
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


def match_domain(routes, domain):
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

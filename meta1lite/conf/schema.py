# The schema of meta1lite.conf: every option, its type and default, and the
# converters of value texts (sizes, durations, endpoints, ...); conf.py parses
# and validates against it. Must never do I/O. Defaults are written as
# configuration text and converted by the same code as the file, so
# conf/meta1lite.conf and load(None) agree; a test checks that the commented
# default file equals these defaults. The one-line doc of every option lives in
# hints.DOCS (read only by tools and error paths; a test keeps both in step).
#
# A table is text, one option a line, because tuples and separate strings cost
# three times the heap on MicroPython (conf+cbor must fit a 64K heap):
#   name|type|arg|default
#   type     str | int | port | size | duration | bool | enum | via | endpoints |
#            networks | domains | nameservers | control   (values)
#            section (always present) | optional (None unless written) |
#            labelled (list of (label, dict) in file order)
#   arg      int, duration, size: the minimum; enum: the choices, a/b/c; sections: the
#            name of their table; str "credentials": must name a smtpc credentials
#   default  text as in the file (lists: items joined by ","); empty = unset
#            (None, or [] for lists); "!" = must be written when the section is.
# entry(table, name) gives (name, type, arg, default); entries(table) all.
# Entries are cut out of the text on demand (no parsed copy stays in the heap).

from meta1lite import netaddr
from meta1lite.const import const
from meta1lite.netaddr import Network, parse_ip

REQUIRED = const("!")
DEFAULT_CONTROL_NAME = const("control")  # control defaults to "<spool>/control"
DEFAULT_ROUTE = const("*")         # smar.route always holds a "*" route (via = mx)
HEADER_ROOM = const(2048)          # bytes smtps may add to a message (Received:, Date:,
                                   # Message-ID:): max_message_size + this must fit the queue
# options compared with each other once the file is read (conf._finish): the
# parser keeps the position of these only
CROSS_CHECKED = ("smtps.max_message_size", "qmgr.max_queue_size")

TABLES = {
    "top": """
hostname|str||relay.home.arpa
spool|str||meta1lite-spool
postmaster|str||root@relay.home.arpa
log_level|enum|debug/info/warning/error|info
log_ring|size||3K
control|control||
smtps|section|smtps|
smar|section|smar|
smtpc|section|smtpc|
qmgr|section|qmgr|
mcp|section|mcp|
""",
    "smtps": """
listen|endpoints||127.0.0.1:2525
listen_tls|endpoints||
relay_from|networks||127.0.0.0/8,::1/128
local_domains|domains||
max_connections|int|1|20
max_connections_per_client|int|1|5
max_bad_commands|int|1|10
max_message_size|size||10M
max_recipients|int|1|100
max_messages_per_client_per_minute|int|1|60
io_timeout|duration|1|5m
command_timeout|duration|1|5m
min_data_rate|int|0|500
data_rate_grace|duration|1|30s
max_junk_commands|int|0|100
bare_lf|enum|reject/normalize|reject
add_missing_headers|bool||yes
tls|optional|smtps.tls|
auth|optional|smtps.auth|
""",
    "smtps.tls": """
certificate|str||!
key|str||!
""",
    "smtps.auth": """
users|str||!
max_failures|int|1|5
lockout|duration|1|10m
""",
    "smar": """
nameservers|nameservers||
dns_timeout|duration|1|5s
inet_protocols|enum|all/ipv4/ipv6|all
aliases|str||
route|labelled|route|
sender_route|labelled|route|
""",
    "route": """
via|via||mx
tls|enum|opportunistic/required/off|
tls_verify|bool||yes
auth|str|credentials|
rewrite_sender|str||
rewrite_from_header|bool||no
""",
    "smtpc": """
max_connections|int|1|10
max_per_destination|int|1|4
io_timeout|duration|1|5m
port|port||25
tls|enum|opportunistic/required/off|opportunistic
ca_file|str||
tls_reserve|bool||no
credentials|labelled|credentials|
""",
    "credentials": """
user|str||!
password_file|str||!
""",
    "qmgr": """
retry_min|duration|1|5m
retry_max|duration|1|1h
max_queue_lifetime|duration|1|5d
max_queue_size|size||32M
max_messages|int|1|1000
min_free_space|size|4096|64K
record_reserve|size||16K
segment_size|size||256K
free_segments|int|0|2
""",
    "mcp": """
user|str||
stop_timeout|duration|1|10s
restart_max|duration|1|1m
watchdog_ms|int|0|0
heap_log_interval|duration|0|10m
fault_injection|bool||no
""",
}

SECTION_TYPES = ("section", "optional", "labelled")
LIST_TYPES = ("endpoints", "networks", "domains", "nameservers")
DEFAULT_VIA_PORT = const(25)
_NUMERIC_ARG = ("int", "duration", "size")
DNS_PORT = const(53)
_MAX_PORT = const(65535)
_DIGITS = "0123456789"
_SIZE_UNITS = {"k": 1024, "m": 1024 * 1024, "g": 1024 * 1024 * 1024}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_BOOLS = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}


def _fields(line):
    # "name|type|arg|default" -> (name, type, arg, default); slices equal to a
    # known name cost no heap on MicroPython (they come back as qstrs)
    a = line.find("|")
    b = line.find("|", a + 1)
    c = line.find("|", b + 1)
    kind, arg, default = line[a + 1:b], line[b + 1:c], line[c + 1:]
    if kind in _NUMERIC_ARG:
        arg = int(arg or "0")
    elif kind == "enum":
        arg = tuple(arg.split("/"))
    if kind in LIST_TYPES:
        default = tuple(default.split(",")) if default else ()
    return (line[:a], kind, arg, default if default != "" else None)


def entry(table, name):
    # (name, type, arg, default) of option `name` in a table, or None
    text = TABLES[table]
    start = text.find("\n" + name + "|") if "|" not in name and "\n" not in name else -1
    if start < 0:
        return None
    return _fields(text[start + 1:text.find("\n", start + 1)])


def entries(table):
    # every entry of a table, in table order (a generator: no list of lines)
    text = TABLES[table]
    start = text.find("\n") + 1
    while start < len(text):
        end = text.find("\n", start)
        if end > start:
            yield _fields(text[start:end])
        start = end + 1


# ---- typed values: each converter takes the text of one value and returns
# the typed value or raises ValueError with a message for the user ----

def _number(text, what):
    if not text or len(text) > 18 or not netaddr.only(text, _DIGITS):
        raise ValueError("bad %s '%s'" % (what, text))
    return int(text)


def to_size(text):
    # '512', '64K', '10M', '1G' -> bytes (K = 1024).
    unit = _SIZE_UNITS.get(text[-1:].lower(), 1)
    digits = text[:-1] if unit > 1 else text
    try:
        return _number(digits, "size") * unit
    except ValueError:
        raise ValueError("bad size '%s': use bytes with an optional K, M or G, e.g. 512, 64K, 10M"
                         % text)


def to_duration(text):
    # '30s', '5m', '1h30m', '5d' (or a bare number of seconds) -> seconds.
    total, digits, ok = 0, "", 0 < len(text) <= 24
    for ch in text.lower():
        if ch in _DIGITS:
            digits += ch
        elif ch in _DURATION_UNITS and digits:
            total, digits = total + int(digits) * _DURATION_UNITS[ch], ""
        else:
            ok = False
    if not ok or (digits and total):
        raise ValueError("bad duration '%s': use numbers with s, m, h, d or w, e.g. 30s, 5m, 1h30m"
                         % text)
    return total + int(digits or "0")


def _hostname_ok(host):
    return host and host[0] not in "-." and netaddr.only(
        host.lower(), "abcdefghijklmnopqrstuvwxyz0123456789.-_")


def parse_endpoint(text, default_port=None):
    # '127.0.0.1:2525', '[::1]:25' or 'host:port' -> (host, port), host
    # without brackets; default_port when the port is left out (None: required).
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[1:close], text[close + 1:]
        if close < 0 or (rest and rest[0] != ":"):
            raise ValueError("bad endpoint '%s': write [host]:port" % text)
    elif text.count(":") > 1:
        raise ValueError("bad endpoint '%s': put an IPv6 address in brackets, e.g. [::1]:25" % text)
    else:
        host, sep, rest = text.partition(":")
        rest = sep + rest
    if not rest and default_port is None:
        raise ValueError("bad endpoint '%s': missing ':port'" % text)
    port = _number(rest[1:], "port") if rest else default_port
    if port > _MAX_PORT:
        raise ValueError("bad endpoint '%s': port over %d" % (text, _MAX_PORT))
    if not _is_ip(host) and not _hostname_ok(host):
        raise ValueError("bad endpoint '%s': bad host '%s'" % (text, host))
    return host, port


def _is_ip(text):
    try:
        parse_ip(text)
        return True
    except ValueError:
        return False


def parse_via(value):
    # A route's via -> ("mx", None, None) | ("direct", host, port) for
    # "[host]:port" (no MX lookup) | ("lookup", host, port) for "host:port".
    if value.lower() == "mx":
        return ("mx", None, None)
    host, port = parse_endpoint(value, DEFAULT_VIA_PORT)
    return ("direct" if value.startswith("[") else "lookup", host, port)


def _to_via(text):
    parse_via(text)
    return "mx" if text.lower() == "mx" else text


def _to_nameserver(text):
    if _is_ip(text):
        return text, DNS_PORT
    host, port = parse_endpoint(text, DNS_PORT)
    if not _is_ip(host):
        raise ValueError("bad name server '%s': use an IP address, optionally with :port" % text)
    return host, port


def _to_control(text):
    if "/" not in text:
        try:
            host, port = parse_endpoint(text)
        except ValueError:
            return text
        if host != "localhost" and not (_is_ip(host) and (
                Network("127.0.0.0/8").contains(host) or Network("::1/128").contains(host))):
            raise ValueError("control endpoint '%s' is not on loopback" % text)
        return host, port
    return text


def _to_enum(text, choices):
    if text.lower() not in choices:
        raise ValueError("'%s' is not one of %s" % (text, " | ".join(choices)))
    return text.lower()


def _to_bool(text):
    if text.lower() not in _BOOLS:
        raise ValueError("'%s' is not yes or no" % text)
    return _BOOLS[text.lower()]


def _at_least(value, minimum):
    if value < (minimum or 0):
        raise ValueError("%d is below the minimum of %d" % (value, minimum))
    return value


def _to_int(text, minimum):
    return _at_least(_number(text, "number"), minimum)


def _to_port(text):
    port = _number(text, "port")
    if not 0 < port <= _MAX_PORT:
        raise ValueError("port %d is not in 1..%d" % (port, _MAX_PORT))
    return port


def convert(kind, arg, text):
    # the typed value of one text for a schema type (ValueError if bad)
    if kind == "str":
        return text
    if kind == "int":
        return _to_int(text, arg)
    if kind == "port":
        return _to_port(text)
    if kind == "duration":
        return _at_least(to_duration(text), arg)
    if kind == "size":
        return _at_least(to_size(text), arg)
    if kind == "bool":
        return _to_bool(text)
    if kind == "enum":
        return _to_enum(text, arg)
    if kind == "via":
        return _to_via(text)
    if kind == "endpoints":
        return parse_endpoint(text)
    if kind == "networks":
        return Network(text)
    if kind == "nameservers":
        return _to_nameserver(text)
    if kind == "control":
        return _to_control(text)
    return text.lower() if kind == "domains" else text

# What only tools and error paths need from the configuration schema, kept out
# of conf and conf/schema.py so that loading a valid file on a 64K MicroPython heap never
# pays for it: the one-line doc of every option (DOCS, same tables as
# schema.TABLES; a test keeps both in step) and the did-you-mean of an
# unknown name. Imported by conf only when it reports an unknown name.
# Must never: do I/O, or be imported on the path of a valid configuration.
from meta1lite.conf import schema
from meta1lite.const import const

_MAX_SUGGEST_DISTANCE = const(3)  # edit distance beyond which no name is suggested

DOCS = {
    "top": """
hostname|name in the greeting, Received: and bounces
spool|queue directory
postmaster|address for double bounces and notices
log_level|least severe level logged
log_ring|bytes of recent log lines kept in memory for status (0: none)
control|queue-tool channel: socket path or loopback host:port; unset: <spool>/control
smtps|the SMTP server
smar|the address resolver: routes, aliases, DNS
smtpc|the SMTP client
qmgr|the queue manager
mcp|the supervisor: restarts, stop, privileges, watchdog
""",
    "smtps": """
listen|SMTP endpoints (STARTTLS if tls is set)
listen_tls|implicit-TLS endpoints (port 465)
relay_from|client networks that may relay
local_domains|domains accepted from anyone, for aliased addresses
max_connections|concurrent SMTP sessions; beyond: 421 4.7.0
max_connections_per_client|concurrent sessions from one address
max_bad_commands|bad commands before the session is closed
max_message_size|largest message in bytes (SIZE, 552 5.3.4)
max_recipients|recipients per message; beyond: 452 4.5.3
max_messages_per_client_per_minute|messages a minute from one address
io_timeout|idle time before 421 4.4.2 and close
command_timeout|a whole command line must arrive within this of the last reply
min_data_rate|bytes/s a DATA must average after data_rate_grace; 0: no floor
data_rate_grace|time DATA may take before min_data_rate applies
max_junk_commands|NOOP/RSET/VRFY/HELP per message before 421 4.7.0; 0: no limit
bare_lf|bare LF/CR in DATA: 550 5.5.2, or make it CRLF
add_missing_headers|add Date:/Message-ID: for relay clients and sendmail
tls|certificate and key for STARTTLS and listen_tls
auth|AUTH PLAIN/LOGIN against a users file
""",
    "smtps.tls": """
certificate|PEM certificate chain file
key|PEM private key file
""",
    "smtps.auth": """
users|users file written by `meta1lite passwd`
max_failures|failed AUTH attempts before a client is locked out
lockout|how long a locked-out client gets 454 4.7.0
""",
    "smar": """
nameservers|DNS servers (ip or ip:port); empty: resolv.conf
inet_protocols|address families of next hops (all, ipv4, ipv6); ipv4 where lwIP has no IPv6 (stm32)
dns_timeout|time to wait for one DNS answer
aliases|aliases file, /etc/aliases format
route|next hop by recipient domain: exact, .sub, *
sender_route|next hop by envelope sender, tried before route
""",
    "route": """
via|mx, "[host]:port" (no MX lookup) or "host:port" (MX of host)
tls|STARTTLS on this route; unset: smtpc.tls
tls_verify|verify the next hop's certificate and name
auth|name of a smtpc credentials section to AUTH with
rewrite_sender|envelope sender to use on this route
rewrite_from_header|also rewrite the From: header to rewrite_sender
""",
    "smtpc": """
max_connections|concurrent outgoing SMTP sessions
max_per_destination|concurrent sessions to one destination
io_timeout|time to wait for a reply from the next hop
port|SMTP port for MX deliveries
tls|STARTTLS to MX hosts
ca_file|CA certificates (PEM); needed on MicroPython
tls_reserve|keep heap for mbedtls' buffers, one TLS connection at a time (boards)
credentials|AUTH credentials named by a route's auth
""",
    "credentials": """
user|user name for AUTH at the next hop
password_file|file whose first line is the password
""",
    "qmgr": """
retry_min|first retry after a temporary failure
retry_max|longest time between retries
max_queue_lifetime|bounce what is still undelivered after this
max_queue_size|bytes in the queue; beyond: 452 4.3.1
max_messages|messages in the queue; beyond: 452 4.3.1
min_free_space|free space kept on the spool's file system
record_reserve|more free space only delivery state and done records may use
segment_size|bytes per queue journal segment (a multiple of the flash block)
free_segments|freed queue segments kept for reuse; more are removed
""",
    "mcp": """
user|started as root (CPython): bind the listeners, then run as this user
stop_timeout|longest orderly stop (SIGTERM, control stop) before exit 0
restart_max|longest wait before restarting a module that died (backoff)
watchdog_ms|boards: machine.WDT timeout fed by mcp; 0 = off
heap_log_interval|MicroPython: log heap free and high-water this often; 0 = off
fault_injection|test aid: allow the control request fault MODULE
""",
}


def doc(table, name):
    # the one-line doc of option `name` in a table, or None
    text = DOCS[table]
    start = text.find("\n" + name + "|")
    if start < 0 or "|" in name or "\n" in name:
        return None
    start += len(name) + 2
    return text[start:text.find("\n", start)]


def distance(a, b):
    # optimal string alignment distance (an adjacent swap costs 1)
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if prev2 is not None and i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[len(b)]


def suggest(name, table):
    # the schema name of a table nearest to `name`, or None if none is near
    best, best_distance = None, min(_MAX_SUGGEST_DISTANCE, max(1, len(name) // 3)) + 1
    for entry in schema.entries(table):
        d = distance(name, entry[0])
        if d < best_distance:
            best, best_distance = entry[0], d
    return best


def unknown(text, is_section, table, where):
    # the message for an unknown option or section name `text` in a table
    name = text.lower()
    message = "unknown %s '%s' in %s" % ("section" if is_section else "option", text,
                                          "section '%s'" % where if where else "the top level")
    best = suggest(name, table)
    if best:
        message += "; did you mean '%s'?" % best
    elif where and schema.entry("top", name):
        message += "; is a '}' missing before it?"
    return message


def size_conflict(size, queue):
    # the message for a smtps.max_message_size that an empty queue cannot hold
    if not size:
        what = "max_message_size = 0 (no limit)"
    else:
        what = "max_message_size (%d bytes, plus %d for the header fields smtps adds)" % (
            size, schema.HEADER_ROOM)
    return ("%s does not fit in qmgr.max_queue_size (%d bytes): such a message could never"
            " be queued; lower max_message_size to at most %d or raise max_queue_size"
            % (what, queue, max(0, queue - schema.HEADER_ROOM)))

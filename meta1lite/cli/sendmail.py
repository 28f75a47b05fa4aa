# meta1lite.sendmail - sendmail-compatible injection from stdin (CPython only).
#
# Owns: sendmail's command line (-t -i -oi -f -F -r, recipients), reading the message
# from stdin, the fields a local submission needs (Received:, From:, Date:,
# Message-ID:), and sendmail's exit codes. The message goes straight into the spool
# through spool.inject (a complete segment in incoming/), so mail queues while the
# daemon is down. Must never: talk SMTP, or exit 0 before the message is durable.
import email.utils
import getpass
import os
import sys

from meta1lite import headers
from meta1lite.spool import Spool, SpoolFull

EX_OK, EX_USAGE, EX_DATAERR, EX_TEMPFAIL = 0, 64, 65, 75
MAX_LINE = 1000                       # octets incl. CRLF (RFC 5321 4.5.3.1.6)
IGNORED_FLAGS = ("-v", "-bm", "-em", "-ep", "-eq", "-m", "-n", "-U")
ADDRESS_FIELDS = (b"to", b"cc", b"bcc")


class UsageError(Exception):
    pass


class DataError(Exception):
    pass


def parse_args(argv):
    """Options dict and recipient list from sendmail's argv (without the program name)."""
    opts = {"t": False, "i": False, "f": None, "F": None}
    rcpts, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            rcpts.extend(args)
            break
        if not arg.startswith("-") or arg == "-":
            rcpts.append(arg)
        elif arg in ("-t", "-i", "-oi"):
            opts[arg[-1]] = True
        elif arg[:2] in ("-f", "-r", "-F"):
            key = "F" if arg[1] == "F" else "f"
            opts[key] = arg[2:] or (args.pop(0) if args else _usage("%s needs a value" % arg))
        elif arg in IGNORED_FLAGS or arg.startswith("-o") or arg.startswith("-B"):
            continue
        else:
            _usage("unsupported option %s" % arg)
    return opts, rcpts


def _usage(text):
    raise UsageError(text)


def read_message(stream, dot_ends):
    """The message from stdin as CRLF lines; a lone '.' ends it unless -i/-oi."""
    lines = []
    for raw in stream:
        line = raw.rstrip(b"\n").rstrip(b"\r")
        if dot_ends and line == b".":
            break
        if len(line) + 2 > MAX_LINE:
            raise DataError("line %d is longer than %d octets" % (len(lines) + 1, MAX_LINE))
        lines.append(line + b"\r\n")
    return b"".join(lines)


def split_header(message):
    """(header section without the blank line, body including the blank line)."""
    if message.startswith(b"\r\n"):
        return b"", message
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[:end + 2], message[end + 2:]


def header_fields(section):
    """List of (lower-case name, raw field bytes incl. continuation lines)."""
    fields = []
    for line in section.split(b"\r\n")[:-1] if section else []:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + b"\r\n" + line)
        else:
            fields.append((line.partition(b":")[0].strip().lower(), line))
    return fields


def recipients_from_headers(fields):
    """Addresses in To:/Cc:/Bcc:, and the fields with Bcc: removed (sendmail -t)."""
    values = [raw.partition(b":")[2].decode("utf-8", "replace").replace("\r\n", "")
              for name, raw in fields if name in ADDRESS_FIELDS]
    found = [addr for _name, addr in email.utils.getaddresses(values) if addr]
    return found, [f for f in fields if f[0] != b"bcc"]


def qualify(address, hostname):
    """A bare local part gets '@hostname' (like Postfix's myorigin)."""
    return address if "@" in address else "%s@%s" % (address, hostname)


def default_sender(hostname):
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "root"
    return "%s@%s" % (user, hostname)


def build(cfg, opts, rcpts, message, queue_id_hint="local"):
    """(sender, recipients, final message bytes) for a local submission."""
    hostname = cfg["hostname"]
    section, body = split_header(message)
    fields = header_fields(section)
    if opts["t"]:
        found, fields = recipients_from_headers(fields)
        rcpts = list(rcpts) + found
    if not rcpts:
        raise UsageError("no recipients given (use -t or name them)")
    sender = opts["f"] if opts["f"] is not None else default_sender(hostname)
    sender = qualify(sender, hostname) if sender else ""
    names = [name for name, _raw in fields]
    top = headers.received_field(hostname, None, "localhost", "127.0.0.1", queue_id_hint,
                                 "local (uid %d)" % os.getuid())
    if b"from" not in names and sender:
        top += ("From: %s <%s>\r\n" % (opts["F"], sender) if opts["F"]
                else "From: %s\r\n" % sender).encode()
    if cfg["smtps"]["add_missing_headers"]:
        top += headers.missing_fields(names, hostname, queue_id_hint)
    kept = b"".join(raw + b"\r\n" for _name, raw in fields)
    return sender, [qualify(r, hostname) for r in rcpts], top + kept + body


def open_spool(cfg):
    q = cfg["qmgr"]
    return Spool(cfg["spool"], q["max_queue_size"], q["max_messages"], q["min_free_space"],
                 hostname=cfg["hostname"])


def submit(cfg, opts, rcpts, stream):
    """Queue one message; returns the queue id. Raises UsageError/DataError/SpoolFull."""
    message = read_message(stream, dot_ends=not opts["i"])
    sender, rcpts, data = build(cfg, opts, rcpts, message)
    if len(data) > cfg["smtps"]["max_message_size"]:
        raise DataError("message size %d exceeds max_message_size %d"
                        % (len(data), cfg["smtps"]["max_message_size"]))
    spool = open_spool(cfg)
    reason = spool.check_accept(len(data))
    if reason:
        raise SpoolFull(reason)
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)] or [b""]
    return spool.inject(sender, rcpts, chunks, {"client": "local", "proto": "sendmail"})


def main(cfg, argv, stdin=None):
    """Run sendmail; returns a sendmail exit code."""
    stream = stdin if stdin is not None else sys.stdin.buffer
    try:
        opts, rcpts = parse_args(argv)
        submit(cfg, opts, rcpts, stream)
    except UsageError as exc:
        sys.stderr.write("sendmail: %s\n" % exc)
        return EX_USAGE
    except DataError as exc:
        sys.stderr.write("sendmail: %s\n" % exc)
        return EX_DATAERR
    except (SpoolFull, OSError) as exc:
        sys.stderr.write("sendmail: cannot queue the message now: %s\n" % exc)
        return EX_TEMPFAIL
    return EX_OK

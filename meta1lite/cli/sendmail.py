# meta1lite.cli.sendmail - sendmail-compatible injection from stdin (CPython and the
# MicroPython unix port: `micropython -m meta1lite sendmail`).
#
# Owns: sendmail's command line (-t -i -oi -f -r -F -v, recipients, `--`, the
# options cron/mailx/PHP pass and that mean nothing here), reading the message from
# stdin (LF or CRLF; a lone "." ends it unless -i/-oi), the fields a local
# submission needs (Received:, and From:/Date:/Message-ID: when missing), Bcc:
# removal with -t, and sendmail's exit codes (0, 64 usage, 65 data, 75 tempfail).
# The message goes to the queue through cli/inject.py: the running daemon over its
# control channel, else the spool's journal under the spool's lock, so mail queues
# while the daemon is down and exit 0 means durable on both runtimes.
# Must never: talk SMTP, exit 0 before the message is durable, write a queue ID
# that is not the message's own, or pass on a bare CR (SMTP smuggling).
import binascii
import sys

from meta1lite import compat, headers
from meta1lite.cli import addrlist, host
from meta1lite.cli.inject import Busy, Refused, queue_message
from meta1lite.const import const
from meta1lite.proto import address
from meta1lite.spool.message import SpoolFull

EX_OK, EX_USAGE, EX_DATAERR, EX_TEMPFAIL = 0, 64, 65, 75
MAX_LINE = const(1000)                # octets incl. CRLF (RFC 5321 4.5.3.1.6)
_INJECT_CHUNK = const(64 * 1024)      # bytes handed to Spool.inject at a time
_FLAG_LETTERS = const("vmnUG")        # accepted and ignored (-v: print the queue ID)
_VALUE_LETTERS = const("fFrBNRVXhLpOAed")  # take a value, attached or as the next argument
ADDRESS_FIELDS = (b"to", b"cc", b"bcc")
RESENT_FIELDS = (b"resent-to", b"resent-cc", b"resent-bcc")
CRLF = b"\r\n"


class UsageError(Exception):
    pass


class DataError(Exception):
    pass


def _usage(text):
    raise UsageError(text)


def parse_args(argv):
    """(options dict, recipient arguments) from sendmail's argv (without argv[0]).

    getopt-style: flags may be grouped (-ti), values attached (-ffoo) or separate
    (-f foo); `--` ends the options; -o... (-oi, -oem, -odb) and -bm are sendmail's
    long forms; other -b modes (-bs, -bp, -bd) are not supported here."""
    opts = {"t": False, "i": False, "f": None, "F": None, "v": False}
    rcpts, i = [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            rcpts.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            rcpts.append(arg)
        elif arg.startswith("-o"):
            opts["i"] = opts["i"] or arg == "-oi"
        elif arg.startswith("-b"):
            if arg != "-bm":
                _usage("%s is not supported (meta1lite mailq lists the queue)" % arg)
        else:
            i = _parse_cluster(arg, argv, i, opts)
    return opts, rcpts


def _parse_cluster(arg, argv, i, opts):
    j = 1
    while j < len(arg):
        letter = arg[j]
        j += 1
        if letter in "ti":
            opts[letter] = True
        elif letter in _FLAG_LETTERS:
            opts["v"] = opts["v"] or letter == "v"
        elif letter in _VALUE_LETTERS:
            value = arg[j:]
            if not value:
                if i >= len(argv):
                    _usage("-%s needs a value" % letter)
                value, i = argv[i], i + 1
            if letter in "fr":
                opts["f"] = value
            elif letter == "F":
                opts["F"] = _full_name(value)
            return i
        else:
            _usage("unsupported option -%s" % letter)
    return i


def _full_name(value):
    # -F goes into From: as given: no control character (a bare CR/LF would reach the
    # next hop), and text (CPython hands undecodable argv bytes over as surrogates)
    try:
        value.encode("utf-8")
    except UnicodeError:
        _usage("-F: the name is not valid UTF-8")
    for ch in value:
        if ord(ch) < 32 or 127 <= ord(ch) < 160:
            _usage("-F: the name contains a control character")
    return value


def read_message(stream, dot_ends, max_size, normalize_cr):
    """The message from stdin as a list of CRLF-terminated lines.

    LF or CRLF line ends; a lone '.' ends it unless dot_ends is false (-i/-oi).
    A bare CR is refused (DataError), or with normalize_cr made a line end, as
    smtps does with bare_lf = normalize. DataError for a line over MAX_LINE octets
    or a message over max_size."""
    lines, size, number = [], 0, 0
    for raw in stream:
        number += 1
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if line.endswith(b"\r"):
            line = line[:-1]
        if dot_ends and line == b".":
            break
        if b"\r" in line and not normalize_cr:
            raise DataError("line %d contains a bare CR" % number)
        for piece in line.split(b"\r"):
            if len(piece) + 2 > MAX_LINE:
                raise DataError("line %d is longer than %d octets" % (number, MAX_LINE))
            size += len(piece) + 2
            if size > max_size:
                raise DataError("message exceeds max_message_size (%d bytes)" % max_size)
            lines.append(piece + CRLF)
    return lines


def _is_field(line):
    name, sep, _ = line.partition(b":")
    if not sep or not name:
        return False
    for byte in name:
        if byte < 33 or byte > 126:
            return False
    return True


def split_header(lines):
    """(fields, body lines): fields = [(lower-case name, raw lines incl. CRLF)].

    The header ends at the first blank line; a line that is neither a field nor a
    continuation also ends it, and then a blank line is put before the body."""
    fields = []
    for i, line in enumerate(lines):
        if line == CRLF:
            return fields, lines[i:]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
        elif _is_field(line):
            fields.append((line.partition(b":")[0].lower(), line))
        else:
            return fields, [CRLF] + lines[i:]
    return fields, []


def recipients_from_headers(fields):
    """Addresses of To:/Cc:/Bcc: (Resent-To/-Cc/-Bcc: if there are any), and the
    fields without Bcc:/Resent-Bcc: (sendmail -t)."""
    names = RESENT_FIELDS if [f for f in fields if f[0] in RESENT_FIELDS] else ADDRESS_FIELDS
    values = []
    for name, raw in fields:
        if name in names:
            try:
                values.append(raw.partition(b":")[2].decode("utf-8").replace("\r\n", ""))
            except UnicodeError:
                raise DataError("%s: field is not valid UTF-8" % name.decode("ascii", "replace"))
    found = addrlist.addresses(values)
    return found, [f for f in fields if f[0] not in (b"bcc", b"resent-bcc")]


def qualify(addr, hostname):
    """A bare local part gets '@hostname' (like Postfix's myorigin)."""
    return addr if "@" in addr else "%s@%s" % (addr, hostname)


def check_address(addr, sender=False):
    """addr if it is a valid SMTP path (without brackets), else ValueError."""
    try:
        address.parse_path(("<%s>" % addr).encode("utf-8"), sender=sender, smtputf8=True)
    except (address.AddressError, UnicodeError) as exc:
        raise ValueError("bad address <%s>: %s" % (addr, exc))
    return addr


def envelope_sender(value, hostname):
    """The envelope sender from -f/-r (or the user), qualified; "" for -f '<>'."""
    if value is None:
        try:
            value = host.username()
        except (KeyError, OSError, ValueError):
            value = "root"
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    if not value:
        return ""
    try:
        return check_address(qualify(value, hostname), sender=True)
    except ValueError as exc:
        raise UsageError("-f: %s" % exc)


def recipients(args, found, hostname, limit):
    """Qualified, checked and de-duplicated envelope recipients."""
    out = []
    for source, error, values in (("argument", UsageError, args), ("header", DataError, found)):
        for value in values:
            parsed = addrlist.addresses([value]) if source == "argument" else [value]
            if not parsed:
                raise error("bad recipient %s %r" % (source, value))
            for addr in parsed:
                try:
                    addr = check_address(qualify(addr, hostname))
                except ValueError as exc:
                    raise error(str(exc))
                if addr not in out:
                    out.append(addr)
    if not out:
        raise UsageError("no recipients: name them as arguments or use -t")
    if len(out) > limit:
        raise UsageError("too many recipients (%d, smtps max_recipients = %d)" % (len(out), limit))
    return out


def received_field(hostname, when=None):
    """Received: of a local submission, Postfix-shaped. The spool assigns the queue
    ID inside inject(), after this field is written, so there is no `id` clause."""
    when = compat.wall_time() if when is None else when
    return ("Received: by %s (meta1lite, from userid %d);\r\n\t%s\r\n"
            % (hostname, host.getuid(), compat.rfc5322_date(when))).encode()


def unique_token():
    """Random characters for a Message-ID (the queue ID is not known yet)."""
    return binascii.hexlify(compat.urandom(8)).decode()


def build(cfg, opts, args, lines):
    """(sender, recipients, message lines) for a local submission."""
    hostname = cfg["hostname"]
    fields, body = split_header(lines)
    found = []
    if opts["t"]:
        found, fields = recipients_from_headers(fields)
    rcpts = recipients(args, found, hostname, cfg["smtps"]["max_recipients"])
    sender = envelope_sender(opts["f"], hostname)
    names = [name for name, _raw in fields]
    top = received_field(hostname)
    if b"from" not in names and sender:
        from_field = addrlist.format_from(opts["F"], sender) if opts["F"] else sender
        top += ("From: %s\r\n" % from_field).encode("utf-8")
    if cfg["smtps"]["add_missing_headers"]:
        top += headers.missing_fields(names, hostname, unique_token())
    return sender, rcpts, [top] + [raw for _name, raw in fields] + body


def chunks_of(lines, size=_INJECT_CHUNK):
    """Join lines into pieces of about `size` bytes."""
    piece, fill = [], 0
    for line in lines:
        piece.append(line)
        fill += len(line)
        if fill >= size:
            yield b"".join(piece)
            piece, fill = [], 0
    if piece:
        yield b"".join(piece)


def submit(cfg, opts, args, stream):
    """Queue one message; returns its queue ID. Raises UsageError/DataError/SpoolFull."""
    smtps = cfg["smtps"]
    lines = read_message(stream, not opts["i"], smtps["max_message_size"],
                         smtps["bare_lf"] == "normalize")
    sender, rcpts, message = build(cfg, opts, args, lines)
    size = sum(len(line) for line in message)
    if size > smtps["max_message_size"]:
        raise DataError("message size %d exceeds max_message_size %d" % (size, smtps["max_message_size"]))
    return queue_message(cfg, sender, rcpts, list(chunks_of(message)))


def main(cfg, argv, stdin=None):
    """`meta1lite sendmail` / `meta1lite-sendmail`; returns a sendmail exit code."""
    stream = stdin if stdin is not None else sys.stdin.buffer
    compat.configure_logging(cfg["hostname"], "error")     # the spool's lines are not ours
    try:
        opts, args = parse_args(argv)
        queue_id = submit(cfg, opts, args, stream)
    except UsageError as exc:
        sys.stderr.write("sendmail: %s\n" % exc)
        return EX_USAGE
    except (DataError, Refused) as exc:
        sys.stderr.write("sendmail: %s\n" % exc)
        return EX_DATAERR
    except (SpoolFull, Busy, OSError) as exc:
        sys.stderr.write("sendmail: cannot queue the message now: %s\n" % exc)
        return EX_TEMPFAIL
    if opts["v"]:
        sys.stderr.write("sendmail: queued as %s\n" % queue_id)
    return EX_OK

# meta1lite.headers - the few header fields a relay adds: Received:, and a missing
# Date: or Message-ID: for mail from our own devices (smarthosts reject mail without).
#
# Owns: building those fields, a bounded scanner of a message's header section that
# tells which fields are present, and the From: rewrite a route may ask for
# (rewrite_from_header). Must never: rewrite, reorder or remove any other field the
# sender wrote, or hold more than HEADER_SCAN_LIMIT bytes of a message.
from meta1lite import compat
from meta1lite.const import const

HEADER_SCAN_LIMIT = const(16 * 1024)  # bytes of header section examined for Date:/Message-ID:
_MAX_FROM_FIELD = const(4096)   # octets of a From: field kept to find its display name
_MAX_HEADER_LINE = const(8192)  # a longer header line is passed through untouched
WATCHED = (b"date", b"message-id", b"from")


def received_field(hostname, helo, client_name, client_ip, queue_id, protocol, recipient=None,
                   tls=None, when=None):
    """A Received: field (RFC 5321 4.4) with CRLF line endings, as bytes."""
    when = compat.wall_time() if when is None else when
    lines = ["Received: from %s (%s [%s])" % (helo or "unknown", client_name or "unknown",
                                              client_ip),
             "\tby %s (meta1lite) with %s id %s" % (hostname, protocol, queue_id)]
    if tls:
        lines.append("\t(using %s)" % tls)
    if recipient:
        lines.append("\tfor <%s>" % recipient)
    lines[-1] += "; " + compat.rfc5322_date(when)
    return ("\r\n".join(lines) + "\r\n").encode()


def missing_fields(present, hostname, queue_id, when=None):
    """Date:/Message-ID: fields (bytes) for the names not in `present`."""
    when = compat.wall_time() if when is None else when
    out = b""
    if b"date" not in present:
        out += ("Date: %s\r\n" % compat.rfc5322_date(when)).encode()
    if b"message-id" not in present:
        out += ("Message-ID: <%d.%s@%s>\r\n" % (int(when), queue_id, hostname)).encode()
    return out


def _header_end(data):
    # where the header section ends in data (its blank line), or -1
    if data[:2] == b"\r\n":
        return 0
    return data.find(b"\r\n\r\n")


class HeaderScanner:
    """Collects the start of a message until the end of its header section.

    feed(chunk) returns None while it still needs data (it keeps the bytes), or
    the bytes held so far once the header section ended or HEADER_SCAN_LIMIT was
    reached; after that `present` names the watched fields seen and feed() just
    passes chunks through."""

    def __init__(self):
        self.held = b""
        self.done = False
        self.present = []
        self.message_id = None

    def feed(self, chunk):
        if self.done:
            return chunk
        if not self.held and not isinstance(chunk, memoryview):
            end = _header_end(chunk)
            if end >= 0:        # the usual message: its whole header in the first chunk,
                self._scan(bytes(memoryview(chunk)[:end]))   # its header copied, not 1K
                self.done = True
                return chunk
        self.held += chunk
        end = _header_end(self.held)
        if end < 0 and len(self.held) < HEADER_SCAN_LIMIT:
            return None
        self._scan(self.held[:end] if end >= 0 else self.held)
        if end < 0:                       # no end seen: never add anything
            self.present = list(WATCHED)
        self.done = True
        held, self.held = self.held, b""
        return held

    def finish(self):
        """At end of data: the bytes still held (a message that is all header)."""
        if self.done:
            return b""
        self._scan(self.held)
        self.done = True
        held, self.held = self.held, b""
        return held

    def _scan(self, section):
        for line in section.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            name = name.strip().lower()
            if sep and name in WATCHED and line[:1] not in (b" ", b"\t"):
                self.present.append(name)
                if name == b"message-id":     # logged: no control or escape bytes
                    self.message_id = bytes(b if 32 <= b < 127 else 63 for b in value.strip()).decode()


class FromRewriter:
    """Streaming filter: replaces the address of the From: field(s) of the header
    section (keeping a display name), and passes everything else through."""

    def __init__(self, address):
        self.address = address.encode()
        self.in_header = True
        self.pending = b""
        self.field = None             # a From: field being collected (with continuations)
        self.midline = False          # inside an over-long line: pass to its end

    def feed(self, chunk):
        """Filter one chunk; returns the bytes to send."""
        if not self.in_header:
            return chunk
        data, out, start = self.pending + bytes(chunk), [], 0
        while self.in_header:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            self._line(data[start:nl + 1], out)
            start = nl + 1
        rest = data[start:]
        if self.in_header and len(rest) > _MAX_HEADER_LINE:
            self._flush(out)
            out.append(rest)
            rest, self.midline = b"", True
        self.pending = rest if self.in_header else b""
        if not self.in_header:
            out.append(rest)
        return b"".join(out)

    def finish(self):
        """The bytes held back at the end of the body."""
        out = []
        self._flush(out)
        out.append(self.pending)
        self.pending = b""
        return b"".join(out)

    def _line(self, line, out):
        if self.midline:
            self.midline = False
            return out.append(line)
        if line[:1] in (b" ", b"\t") and self.field is not None:
            if len(self.field) < _MAX_FROM_FIELD:
                self.field += line
            return None
        self._flush(out)
        if line in (b"\r\n", b"\n"):
            self.in_header = False
        elif line[:5].lower() == b"from:":
            self.field = line
            return None
        out.append(line)

    def _flush(self, out):
        if self.field is not None:
            out.append(self._rewritten(self.field))
            self.field = None

    def _rewritten(self, field):
        value = b" ".join(field[5:].split())
        angle = value.rfind(b"<")
        display = value[:angle].strip() if angle >= 0 and b">" in value[angle:] else b""
        if display:
            return b"From: " + display + b" <" + self.address + b">\r\n"
        return b"From: " + self.address + b"\r\n"

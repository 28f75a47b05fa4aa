# meta1lite.headers - the few header fields a relay adds: Received:, and a missing
# Date: or Message-ID: for mail from our own devices (smarthosts reject mail without).
#
# Owns: building those fields, and a bounded scanner of a message's header section
# that tells which fields are present. Must never: rewrite, reorder or remove a
# field the sender wrote, or hold more than HEADER_SCAN_LIMIT bytes of a message.
from meta1lite import compat

HEADER_SCAN_LIMIT = 16 * 1024    # bytes of header section examined for Date:/Message-ID:
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
        self.held += chunk
        end = self._header_end()
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

    def _header_end(self):
        if self.held.startswith(b"\r\n"):
            return 0
        return self.held.find(b"\r\n\r\n")

    def _scan(self, section):
        for line in section.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            name = name.strip().lower()
            if sep and name in WATCHED and line[:1] not in (b" ", b"\t"):
                self.present.append(name)
                if name == b"message-id":
                    self.message_id = value.strip().decode("utf-8", "replace")

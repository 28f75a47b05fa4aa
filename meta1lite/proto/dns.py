# meta1lite/proto/dns.py - the sans-I/O DNS codec under smar's resolver.
# Owns: building queries (A, AAAA, MX, CNAME; RD=1; optional EDNS0 OPT), the 2-byte
# length framing of DNS over TCP, and parsing a response into a plain Response
# object after checking that it answers our query (id and question).
# Must never: do I/O, keep state between calls, or let anything but DNSError escape
# while reading untrusted bytes (every offset, count, label and pointer is bounded).
# Runs on MicroPython and CPython.
import struct

from meta1lite.const import const

TYPE_A = const(1)
TYPE_CNAME = const(5)
TYPE_SOA = const(6)
TYPE_MX = const(15)
TYPE_AAAA = const(28)
TYPE_OPT = const(41)
CLASS_IN = const(1)
QUERY_TYPES = (TYPE_A, TYPE_AAAA, TYPE_MX, TYPE_CNAME)
TYPE_NAMES = {TYPE_A: "A", TYPE_CNAME: "CNAME", TYPE_MX: "MX", TYPE_AAAA: "AAAA"}

RCODE_NOERROR = const(0)
RCODE_FORMERR = const(1)
RCODE_SERVFAIL = const(2)
RCODE_NXDOMAIN = const(3)
RCODE_NOTIMP = const(4)
RCODE_REFUSED = const(5)
# error answers that may come without a question section (as dnspython accepts them)
ERROR_RCODES = (RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NOTIMP, RCODE_REFUSED)

FLAG_QR = const(0x8000)
FLAG_AA = const(0x0400)
FLAG_TC = const(0x0200)
FLAG_RD = const(0x0100)
_OPCODE_MASK = const(0x7800)
RCODE_MASK = const(0x000F)

HEADER_LEN = const(12)
RR_FIXED_LEN = const(10)   # type, class, ttl, rdlength after the owner name
_MIN_RR_LEN = const(11)    # a root owner name plus the fixed part
MAX_NAME_WIRE_LEN = const(255)  # RFC 1035 2.3.4, length octets included
MAX_LABEL_LEN = const(63)
MAX_LABELS = const(127)
MAX_POINTER_HOPS = const(16)  # compression pointers followed while reading one name
MAX_RECORDS = const(256)   # answer + authority + additional records in one response
MAX_ANSWERS = const(64)    # answers kept; later ones are still checked, then dropped
MAX_MESSAGE_LEN = const(65535)
MAX_TTL = const(0x7FFFFFFF)  # RFC 2181 8: larger values mean 0
_UDP_PLAIN_PAYLOAD = const(512)
EDNS_PAYLOAD = const(1232)  # the UDP payload size we advertise (DNS flag day 2020)
HOSTNAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
ESCAPED_CHARS = b'"().;\\@$'


class DNSError(Exception):
    """A malformed, oversized or unexpected DNS message, or a bad query name."""


class Response:
    """A checked DNS response.

    answers: (name, type, ttl, value) for A/AAAA (value: address text), MX (value:
    (preference, exchange)) and CNAME (value: target) records of class IN, in the
    order received, at most MAX_ANSWERS of them; names as text without the final
    dot ("." for the root).
    negative_ttl: min(SOA TTL, SOA minimum) from the authority section, or None.
    """

    def __init__(self, qid, rcode, tc, aa, qname, qtype, answers, negative_ttl):
        self.id = qid
        self.rcode = rcode
        self.tc = tc
        self.aa = aa
        self.qname = qname
        self.qtype = qtype
        self.answers = answers
        self.negative_ttl = negative_ttl

    def __repr__(self):
        return "Response(id=%d, rcode=%d, tc=%r, qname=%r, qtype=%d, answers=%r)" % (
            self.id, self.rcode, self.tc, self.qname, self.qtype, self.answers)


# --- names ----------------------------------------------------------------------

def normalize_name(name):
    """Lower-case name text without the final dot; the root stays "."."""
    if name.endswith(".") and len(name) > 1:
        name = name[:-1]
    return name.lower()


def _check_label(label):
    if not label:
        raise DNSError("empty label in name")
    if len(label) > MAX_LABEL_LEN:
        raise DNSError("label longer than %d octets" % MAX_LABEL_LEN)
    for ch in label:
        if ch not in HOSTNAME_CHARS:
            raise DNSError("character %r not allowed in a host name" % ch)


def encode_name(name):
    """Wire form of a host name (letters, digits, '-', '_'); DNSError if invalid."""
    if not isinstance(name, str):
        raise DNSError("name must be text")
    if name == "." or name == "":
        return b"\x00"
    if name.endswith("."):
        name = name[:-1]
    labels = name.split(".")
    if len(labels) > MAX_LABELS:
        raise DNSError("too many labels")
    out = bytearray()
    for label in labels:
        _check_label(label)
        out.append(len(label))
        out.extend(label.encode())
    out.append(0)
    if len(out) > MAX_NAME_WIRE_LEN:
        raise DNSError("name longer than %d octets" % MAX_NAME_WIRE_LEN)
    return bytes(out)


def _label_text(label):
    out = []
    for c in label:
        if c in ESCAPED_CHARS:
            out.append("\\" + chr(c))
        elif 0x20 < c < 0x7F:
            out.append(chr(c))
        else:
            out.append("\\%03d" % c)
    return "".join(out)


def _names_text(labels):
    if not labels:
        return "."
    return ".".join([_label_text(label) for label in labels])


def _read_name(msg, off):
    """Read a possibly compressed name at off; return (text, offset after it)."""
    labels = []
    end = -1
    hops = 0
    wire_len = 1
    while True:
        if off >= len(msg):
            raise DNSError("name runs past the end of the message")
        length = msg[off]
        kind = length & 0xC0
        if kind == 0xC0:
            off, end, hops = _follow_pointer(msg, off, end, hops)
            continue
        if kind:
            raise DNSError("reserved label type 0x%02x" % length)
        if length == 0:
            return _names_text(labels), (end if end >= 0 else off + 1)
        wire_len += length + 1
        if wire_len > MAX_NAME_WIRE_LEN or len(labels) >= MAX_LABELS:
            raise DNSError("name longer than %d octets" % MAX_NAME_WIRE_LEN)
        if off + 1 + length > len(msg):
            raise DNSError("label runs past the end of the message")
        labels.append(msg[off + 1:off + 1 + length])
        off += 1 + length


def _follow_pointer(msg, off, end, hops):
    if off + 1 >= len(msg):
        raise DNSError("compression pointer runs past the end")
    target = ((msg[off] & 0x3F) << 8) | msg[off + 1]
    if target >= off:
        raise DNSError("compression pointer does not point backwards")
    hops += 1
    if hops > MAX_POINTER_HOPS:
        raise DNSError("more than %d compression pointers" % MAX_POINTER_HOPS)
    if end < 0:
        end = off + 2
    return target, end, hops


# --- addresses ------------------------------------------------------------------

def ipv4_text(raw):
    """Dotted-quad text of 4 address bytes."""
    return "%d.%d.%d.%d" % (raw[0], raw[1], raw[2], raw[3])


def _longest_zero_run(groups):
    best_start = best_len = 0
    start = -1
    for i in range(9):
        if i < 8 and groups[i] == 0:
            if start < 0:
                start = i
            continue
        if start >= 0 and i - start > best_len:
            best_start, best_len = start, i - start
        start = -1
    return best_start, best_len


def ipv6_text(raw):
    """RFC 5952 text of 16 address bytes, exactly as dnspython prints it."""
    groups = [(raw[i] << 8) | raw[i + 1] for i in range(0, 16, 2)]
    start, length = _longest_zero_run(groups)
    if length < 2:
        return ":".join(["%x" % g for g in groups])
    if start == 0 and (length == 6 or (length == 5 and groups[5] == 0xFFFF)):
        prefix = "::" if length == 6 else "::ffff:"
        return prefix + ipv4_text(raw[12:])
    head = ":".join(["%x" % g for g in groups[:start]])
    tail = ":".join(["%x" % g for g in groups[start + length:]])
    return head + "::" + tail


# --- queries and TCP framing ------------------------------------------------------

def build_query(qid, qname, qtype, edns_payload=EDNS_PAYLOAD):
    """A recursive (RD=1) query as bytes; edns_payload=None sends no OPT record."""
    if not 0 <= qid <= 0xFFFF:
        raise DNSError("query id out of range")
    if qtype not in QUERY_TYPES:
        raise DNSError("unsupported query type %r" % (qtype,))
    arcount = 0 if edns_payload is None else 1
    parts = [struct.pack("!HHHHHH", qid, FLAG_RD, 1, 0, 0, arcount),
             encode_name(qname), struct.pack("!HH", qtype, CLASS_IN)]
    if edns_payload is not None:
        if not _UDP_PLAIN_PAYLOAD <= edns_payload <= MAX_MESSAGE_LEN:
            raise DNSError("EDNS payload size out of range")
        parts.append(b"\x00" + struct.pack("!HHIH", TYPE_OPT, edns_payload, 0, 0))
    return b"".join(parts)


def frame_tcp(message):
    """The message with its 2-byte length prefix, for DNS over TCP."""
    if len(message) > MAX_MESSAGE_LEN:
        raise DNSError("message too long for TCP framing")
    return struct.pack("!H", len(message)) + message


def tcp_length(prefix):
    """Length announced by a 2-byte TCP prefix; DNSError if it is not 2 bytes or 0."""
    if len(prefix) != 2:
        raise DNSError("TCP length prefix must be 2 bytes")
    length = (prefix[0] << 8) | prefix[1]
    if length < HEADER_LEN:
        raise DNSError("TCP message shorter than a DNS header")
    return length


# --- responses ------------------------------------------------------------------

def _rdata(msg, rtype, off, rdlen):
    end = off + rdlen
    if rtype == TYPE_A or rtype == TYPE_AAAA:
        size = 4 if rtype == TYPE_A else 16
        if rdlen != size:
            raise DNSError("address record of %d octets" % rdlen)
        raw = msg[off:end]
        return ipv4_text(raw) if rtype == TYPE_A else ipv6_text(raw)
    if rtype == TYPE_MX:
        if rdlen < 3:
            raise DNSError("MX record too short")
        exchange, after = _read_name(msg, off + 2)
        _expect_end(after, end)
        return ((msg[off] << 8) | msg[off + 1], exchange)
    if rtype == TYPE_CNAME:
        target, after = _read_name(msg, off)
        _expect_end(after, end)
        return target
    if rtype == TYPE_SOA:
        return _soa_minimum(msg, off, end)
    return None


def _expect_end(after, end):
    if after != end:
        raise DNSError("record data length does not match its contents")


def _soa_minimum(msg, off, end):
    after = _read_name(msg, off)[1]
    after = _read_name(msg, after)[1]
    _expect_end(after + 20, end)
    return struct.unpack_from("!I", msg, after + 16)[0]


def _read_record(msg, off):
    """Return (name, type, class, ttl, value, offset after the record)."""
    name, off = _read_name(msg, off)
    if off + RR_FIXED_LEN > len(msg):
        raise DNSError("record header runs past the end")
    rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", msg, off)
    off += RR_FIXED_LEN
    if off + rdlen > len(msg):
        raise DNSError("record data runs past the end")
    value = None
    if rclass == CLASS_IN or rtype == TYPE_OPT:
        value = _rdata(msg, rtype, off, rdlen)
    return name, rtype, rclass, ttl, value, off + rdlen


def _read_header(msg):
    if len(msg) < HEADER_LEN:
        raise DNSError("message shorter than a DNS header")
    if len(msg) > MAX_MESSAGE_LEN:
        raise DNSError("message too long")
    return struct.unpack_from("!HHHHHH", msg, 0)


def _check_counts(msg, counts):
    total = counts[0] + counts[1] + counts[2]
    if total > MAX_RECORDS:
        raise DNSError("more than %d records" % MAX_RECORDS)
    if total * _MIN_RR_LEN > len(msg) - HEADER_LEN:
        raise DNSError("record counts larger than the message")


def _check_question(msg, qdcount, qname, qtype):
    if qdcount != 1:
        raise DNSError("response has %d questions" % qdcount)
    name, off = _read_name(msg, HEADER_LEN)
    if off + 4 > len(msg):
        raise DNSError("question runs past the end")
    rtype, rclass = struct.unpack_from("!HH", msg, off)
    if rtype != qtype or rclass != CLASS_IN or name.lower() != normalize_name(qname):
        raise DNSError("response does not answer our question")
    return name, off + 4


def _parse_records(msg, off, counts, ext):
    """Walk all sections; return (answers, negative_ttl); ext[0] gets the EDNS rcode."""
    answers = []
    negative_ttl = None
    owner = None
    for section in range(3):
        for _ in range(counts[section]):
            name, rtype, rclass, ttl, value, off = _read_record(msg, off)
            if ttl > MAX_TTL:
                ttl = 0
            if section == 0 and value is not None and rtype in TYPE_NAMES:
                if len(answers) >= MAX_ANSWERS:
                    continue
                if name != owner:
                    owner = name          # records of one RRset share one string
                answers.append((owner, rtype, ttl, value))
            elif section == 1 and rtype == TYPE_SOA and value is not None:
                negative_ttl = min(ttl, value)
            elif section == 2 and rtype == TYPE_OPT:
                ext[0] = (ttl >> 24) & 0xFF
    return answers, negative_ttl


def parse_response(msg, qid, qname, qtype):
    """Check and parse a response to our query (qid, qname, qtype) into a Response.

    Raises DNSError when the message is malformed, is not a response, or does not
    match our id and question. With TC=1 only the header and question are read; a
    TC=1 or error answer (FORMERR, SERVFAIL, NOTIMP, REFUSED) may omit the question.
    """
    try:
        return _parse(msg, qid, qname, qtype)
    except DNSError:
        raise
    except (IndexError, ValueError, TypeError, struct.error) as exc:
        raise DNSError("malformed message (%s)" % (exc,))


def _parse(msg, qid, qname, qtype):
    rid, flags, qdcount, ancount, nscount, arcount = _read_header(msg)
    if rid != qid:
        raise DNSError("response id %d does not match query id %d" % (rid, qid))
    if not flags & FLAG_QR or flags & _OPCODE_MASK:
        raise DNSError("not a response to a standard query")
    tc = bool(flags & FLAG_TC)
    answers, negative_ttl = [], None
    ext = [0]
    if qdcount == 0 and (tc or (flags & RCODE_MASK) in ERROR_RCODES):
        return Response(rid, flags & RCODE_MASK, tc, bool(flags & FLAG_AA),
                        normalize_name(qname), qtype, answers, negative_ttl)
    name, off = _check_question(msg, qdcount, qname, qtype)
    if not tc:
        counts = (ancount, nscount, arcount)
        _check_counts(msg, counts)
        answers, negative_ttl = _parse_records(msg, off, counts, ext)
    rcode = (ext[0] << 4) | (flags & RCODE_MASK)
    return Response(rid, rcode, tc, bool(flags & FLAG_AA), name, qtype, answers,
                    negative_ttl)

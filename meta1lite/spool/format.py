# meta1lite.spool.format - the on-disk format of the spool: frames, records,
# segment headers, queue IDs, and a tolerant reader of segment files.
#
# Owns: the byte layout (documented in meta1lite/spool/__init__.py's header),
# encoding a frame, reading one back with its checks, finding the next valid frame
# after damage, and the pieces of each record type. Must never: decide what a record
# means for the queue (the other spool modules do), hold a whole segment or body in
# memory, or raise on bad bytes while reading (damage is reported, not thrown).
# Shared code: MicroPython and CPython.
import binascii
import struct

from meta1lite import compat
from meta1lite.const import const

_FORMAT_VERSION = const(1)      # "v" of every record; readers accept <= this
SEGMENT_DIR = const("seg")      # SPOOL/seg/: the journal's segments
INCOMING_DIR = const("incoming")  # SPOOL/incoming/: standalone segments of other processes
MAGIC = b"\x9d\x4d"             # first two bytes of every frame
HEAD_FORMAT = const(">2sBIIII")  # magic, type, generation, tag, payload length, crc32
HEAD_SIZE = const(19)
_MAX_PAYLOAD = const(1 << 20)   # a longer length field is damage, never allocated
SCAN_BLOCK = const(512)         # bytes read at a time when looking for the next frame or
                                # streaming a crc (a buffer every heap keeps for good)
_DIRECT_READ = const(1024)      # longer payloads are crc-checked by streaming before reading
SEGMENT_MARK = const("meta1lite-spool")

T_HEADER = const(0x48)  # 'H' segment header: {"v", "m", "seg", "seq", "kind"}
T_RETIRED = const(0x5A)  # 'Z' segment given up: ignore and remove the file
T_CHUNK = const(0x43)  # 'C' body chunk: {"n": chunk number, "v", "data": bytes}
T_ENVELOPE = const(0x45)  # 'E' envelope: commits a message
T_STATE = const(0x53)  # 'S' per-recipient state after a delivery attempt
T_HOLD = const(0x4B)  # 'K' hold (h: true) or release (h: false)
T_DONE = const(0x44)  # 'D' message finished: why = done | deleted | corrupt | aborted

_ID_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ID_PART = const(6)             # characters of time, then of randomness
ID_RANDOM_LIMIT = 36 ** _ID_PART


# --- frames -------------------------------------------------------------------

def _crc(ftype, gen, tag, length, parts):
    crc = binascii.crc32(struct.pack(">BIII", ftype, gen, tag, length))
    for part in parts:
        crc = binascii.crc32(part, crc)
    return crc & 0xFFFFFFFF


def frame_head(ftype, gen, tag, parts):
    """The 19-byte head of a frame whose payload is the concatenation of parts."""
    length = 0
    for part in parts:
        length += len(part)
    crc = _crc(ftype, gen, tag, length, parts)
    return struct.pack(HEAD_FORMAT, MAGIC, ftype, gen, tag, length, crc)


def frame(ftype, gen, tag, payload):
    """A whole frame (head + payload) around one payload."""
    return frame_head(ftype, gen, tag, (payload,)) + payload


def parse_head(head):
    """(type, gen, tag, length, crc) of a 19-byte head, or None if not a frame head."""
    if len(head) < HEAD_SIZE or head[:2] != MAGIC:
        return None
    fields = struct.unpack(HEAD_FORMAT, head)
    if fields[4] > _MAX_PAYLOAD:
        return None
    return fields[1:]


def record(fields):
    """CBOR payload of a record: fields plus the format version."""
    fields["v"] = _FORMAT_VERSION
    return compat.cbor_dumps(fields)


def decode_record(payload):
    """The dict of a record payload, or None if it is not one we can read."""
    try:
        rec = compat.cbor_loads(payload)
    except compat.CBOR_ERRORS:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("v"), int):
        return None
    if rec["v"] > _FORMAT_VERSION:
        return None
    return rec


def _bytes_head(length):
    if length < 24:
        return bytes((0x40 | length,))
    if length < 0x100:
        return bytes((0x58, length))
    if length < 0x10000:
        return b"\x59" + struct.pack(">H", length)
    return b"\x5a" + struct.pack(">I", length)


def chunk_prefix(number, length):
    """CBOR of {"n": number, "v": 1, "data": <length bytes>} up to the data itself.

    Canonical order puts "data" last, so a chunk is written as prefix + the caller's
    buffer, without copying the body into a new object."""
    empty = compat.cbor_dumps({"n": number, "v": _FORMAT_VERSION, "data": b""})
    return empty[:-1] + _bytes_head(length)


def header_payload(number, seq, kind):
    """Payload of a segment header frame."""
    return record({"m": SEGMENT_MARK, "seg": number, "seq": seq, "kind": kind})


# --- reading ------------------------------------------------------------------

OK, BAD, TORN, DAMAGED = 0, 1, 2, 3
_CHUNK_PEEK = const(24)         # payload bytes that hold a chunk's number and data head
ARG_1_BYTE, ARG_8_BYTES = 24, 27  # CBOR additional info: 1 << (info - 24) argument bytes follow
# allocated once (no fragmenting reads on boards), and one for both uses: the crc
# streaming of read_frame() and the search of find_next_frame(), which reads its
# block again after each candidate (read_frame streamed through it meanwhile)
_scan_buf = bytearray(SCAN_BLOCK + 1)


def _uint_at(buf, at, major):
    """(value, next offset) of a CBOR head of the given major type, or None."""
    if at >= len(buf) or buf[at] >> 5 != major:
        return None
    info = buf[at] & 0x1F
    if info < ARG_1_BYTE:
        return info, at + 1
    if info > ARG_8_BYTES:
        return None
    size = 1 << (info - ARG_1_BYTE)
    if at + 1 + size > len(buf):
        return None
    return int.from_bytes(bytes(buf[at + 1:at + 1 + size]), "big"), at + 1 + size


def parse_chunk(payload):
    """(chunk number, offset of the data, data length) of a chunk payload written by
    chunk_prefix(), from its first _CHUNK_PEEK bytes or more; None if not that shape."""
    if bytes(payload[:3]) != b"\xa3an":
        return None
    number = _uint_at(payload, 3, 0)
    if number is None or bytes(payload[number[1]:number[1] + 8]) != b"av\x01ddata":
        return None
    data = _uint_at(payload, number[1] + 8, 2)
    if data is None:
        return None
    return number[0], data[1], data[0]


def _crc_stream(f, remaining, crc):
    mv = memoryview(_scan_buf)
    while remaining:
        n = f.readinto(mv[:min(len(mv), remaining)])
        if not n:
            return None
        crc = binascii.crc32(mv[:n], crc)
        remaining -= n
    return crc


def read_frame(f, pos, size, gen, peek_chunks=False, direct=_DIRECT_READ):
    """(status, frame) at pos. frame = (type, tag, payload, length) when status is OK.

    BAD: not a frame head of this generation; TORN: a head whose payload runs past
    the end of the file (a torn append); DAMAGED: a whole frame that fails its crc.
    frame = (type, tag, None, length) for TORN and DAMAGED: hints for the log.
    peek_chunks: for a chunk frame, verify the crc by streaming and return only the
    first _CHUNK_PEEK bytes of the payload (recovery never needs the data).
    A payload longer than direct is checked by streaming first, so a damaged length
    field never makes a board allocate a huge buffer."""
    if pos + HEAD_SIZE > size:
        return TORN if pos < size else BAD, None
    f.seek(pos)
    fields = parse_head(f.read(HEAD_SIZE))
    if fields is None or (gen is not None and fields[1] != gen):
        return BAD, None
    ftype, fgen, tag, length, crc = fields
    if pos + HEAD_SIZE + length > size:
        return TORN, (ftype, tag, None, length)
    first = _crc(ftype, fgen, tag, length, ())
    if length <= direct:
        payload = f.read(length)
        got = binascii.crc32(payload, first) if len(payload) == length else None
    else:
        payload = None
        got = _crc_stream(f, length, first)
    if got is None:
        return TORN, (ftype, tag, None, length)
    if got & 0xFFFFFFFF != crc:
        return DAMAGED, (ftype, tag, None, length)
    if payload is None:
        f.seek(pos + HEAD_SIZE)
        payload = f.read(_CHUNK_PEEK if peek_chunks and ftype == T_CHUNK else length)
    return OK, (ftype, tag, payload, length)


def find_next_frame(f, start, size, gen):
    """Offset of the next valid frame of generation gen at or after start, or -1."""
    pos = start
    block = memoryview(_scan_buf)
    while pos < size:
        f.seek(pos)
        n = f.readinto(block)
        if not n:
            return -1
        at = _scan_buf.find(MAGIC, 0, n)
        if not 0 <= at < SCAN_BLOCK:
            pos += SCAN_BLOCK
        elif read_frame(f, pos + at, size, gen, True)[0] == OK:
            return pos + at
        else:
            pos += at + 1           # the block again: read_frame may have used the buffer
    return -1


class SegmentReader:
    """Iterates the valid frames of one segment; notes damage instead of raising.

    After frames() is exhausted: end = offset where valid data ends (the append
    position), damage = list of (start, stop, type_or_None, tag_or_None) regions that
    were skipped in the middle, or a damaged last frame (stop == file size)."""

    def __init__(self, f, size, gen, start):
        self.f = f
        self.size = size
        self.gen = gen
        self.start = start
        self.end = start
        self.damage = []

    def frames(self):
        """Yield (type, tag, offset, length, payload) for each valid frame, in order;
        a chunk frame's payload is only its first _CHUNK_PEEK bytes."""
        pos = self.start
        while True:
            status, frame = read_frame(self.f, pos, self.size, self.gen, True)
            if status == OK:
                yield frame[0], frame[1], pos, frame[3], frame[2]
                pos += HEAD_SIZE + frame[3]
                continue
            following = find_next_frame(self.f, pos + 1, self.size, self.gen)
            hint = frame or (None, None, None, 0)
            if following < 0:
                if status == DAMAGED:
                    self.damage.append((pos, self.size, hint[0], hint[1]))
                break
            self.damage.append((pos, following, hint[0], hint[1]))
            pos = following
        self.end = pos


def iter_tagged(f, start, end, gen, ftype, tag, skips):
    """Yield (offset, first _CHUNK_PEEK payload bytes) of valid frames of one type
    and tag in [start, end), crc-checked without reading them into memory.

    Other frames are skipped by their heads alone (seek, no read); skips maps the
    start of a damaged region (found at recovery) to its end."""
    pos = start
    while pos + HEAD_SIZE <= end:
        if pos in skips:
            pos = skips[pos]
            continue
        f.seek(pos)
        fields = parse_head(f.read(HEAD_SIZE))
        if fields is None or fields[1] != gen or pos + HEAD_SIZE + fields[3] > end:
            pos = find_next_frame(f, pos + 1, end, gen)
            if pos < 0:
                return
            continue
        if fields[0] == ftype and fields[2] == tag:
            status, frame = read_frame(f, pos, end, gen, True, _CHUNK_PEEK)
            if status == OK:
                yield pos, frame[2]
        pos += HEAD_SIZE + fields[3]


# --- queue IDs ----------------------------------------------------------------

def _base36(out, end, n):
    # the _ID_PART characters of n that end at out[end], as byte values: on MicroPython
    # a str per character would be looked up among all interned strings (a linear
    # search that was 3% of the unix port's CPU, perf)
    for i in range(end - 1, end - _ID_PART - 1, -1):
        out[i] = _ID_ALPHABET[n % 36]
        n //= 36


def _id_text(*numbers):
    out = bytearray(_ID_PART * len(numbers))
    end = 0
    for n in numbers:
        end += _ID_PART
        _base36(out, end, n)
    return out.decode()


def tag_text(tag):
    """The queue ID characters that a frame tag stands for (its last six)."""
    return _id_text(tag % ID_RANDOM_LIMIT)


def new_queue_id(now):
    """(queue_id, tag): 6 characters of wall-clock seconds, 6 of randomness.

    The tag (the random part as a number, < 2**32) marks the message's frames."""
    rand = int.from_bytes(compat.urandom(5), "big") % ID_RANDOM_LIMIT
    return _id_text(int(now) % ID_RANDOM_LIMIT, rand), rand


def queue_id_of(id_time, tag):
    """The queue ID whose time part is id_time (as a number) and random part tag."""
    return _id_text(id_time, tag)


def id_time_of(queue_id):
    """The time part of a queue ID as a number, or None if it is not one."""
    try:
        return int(queue_id[:_ID_PART], 36) if len(queue_id) == 2 * _ID_PART else None
    except ValueError:
        return None


def tag_of(queue_id):
    """The frame tag of a queue ID (its random part as a number), or None."""
    try:
        return int(queue_id[_ID_PART:], 36) if len(queue_id) == 2 * _ID_PART else None
    except ValueError:
        return None


def new_generation(old=None):
    """A random nonzero generation number different from old."""
    while True:
        gen = int.from_bytes(compat.urandom(4), "big")
        if gen and gen != old:
            return gen

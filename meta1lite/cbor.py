# meta1lite.cbor - the small CBOR codec (RFC 8949) for queue records on MicroPython.
# Owns: encoding and decoding exactly dict, list (tuple encodes as a list), str,
# bytes (bytearray/memoryview encode as bytes), int in the 64-bit CBOR range, bool
# and None, with deterministic output byte-identical to cbor2.dumps(obj,
# canonical=True): shortest heads, definite lengths, map keys sorted by their
# encoded form (shorter first, then bytewise).
# Must never: allocate from an untrusted length before checking it against the
# data, recurse without a bound, or let any exception but CBORError escape on bad
# input. Shared code: runs on MicroPython and CPython (no f-strings, annotations).
import struct

MAX_DEPTH = 16          # containers nested deeper than this are refused
MAX_ITEMS = 65536       # elements of one array, or pairs of one map
_INT_LIMIT = 1 << 64    # CBOR heads carry at most 64 bits

_UINT, _NINT, _BYTES, _TEXT, _ARRAY, _MAP, _TAG, _SIMPLE = range(8)
_INDEFINITE = 31
_BREAK = 0xFF
_FALSE, _TRUE, _NULL = 0xF4, 0xF5, 0xF6
# additional info 24..27 -> (bytes after the initial byte, struct format)
_ARG_FORMATS = {24: (1, ">B"), 25: (2, ">H"), 26: (4, ">I"), 27: (8, ">Q")}
_KEY_TYPES = (str, bytes, int, bool, type(None))


class CBORError(ValueError):
    """Any encode or decode problem; the message says what and at which offset."""


class CBORTruncated(CBORError):
    """The data ends inside an item (a torn tail, or a length beyond the data)."""


# ---------------------------------------------------------------- encoding

def dumps(obj):
    """Encode obj as canonical CBOR bytes (same bytes as cbor2 canonical=True)."""
    out = bytearray()
    _encode(obj, out, 0)
    return bytes(out)


def _head(out, major, n):
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out += struct.pack(">BH", mt | 25, n)
    elif n < 0x100000000:
        out += struct.pack(">BI", mt | 26, n)
    else:
        out += struct.pack(">BQ", mt | 27, n)


def _encode(obj, out, depth):
    if obj is None:
        out.append(_NULL)
    elif obj is True:
        out.append(_TRUE)
    elif obj is False:
        out.append(_FALSE)
    elif isinstance(obj, int):
        _encode_int(obj, out)
    elif isinstance(obj, str):
        data = _utf8(obj)
        _head(out, _TEXT, len(data))
        out += data
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj) if isinstance(obj, memoryview) else obj
        _head(out, _BYTES, len(data))
        out += data
    elif isinstance(obj, (list, tuple)):
        _check_container(len(obj), depth, "array")
        _head(out, _ARRAY, len(obj))
        for item in obj:
            _encode(item, out, depth + 1)
    elif isinstance(obj, dict):
        _encode_map(obj, out, depth)
    else:
        raise CBORError("cannot encode type %s" % type(obj).__name__)


def _encode_int(n, out):
    if n >= 0:
        if n >= _INT_LIMIT:
            raise CBORError("int %d is beyond 64 bits" % n)
        _head(out, _UINT, n)
    else:
        if n < -_INT_LIMIT:
            raise CBORError("int %d is beyond 64 bits" % n)
        _head(out, _NINT, -1 - n)


def _utf8(text):
    try:
        return text.encode("utf-8")
    except UnicodeError:
        raise CBORError("str is not encodable as UTF-8")


def _check_container(count, depth, what):
    if depth >= MAX_DEPTH:
        raise CBORError("nesting deeper than MAX_DEPTH=%d" % MAX_DEPTH)
    if count > MAX_ITEMS:
        raise CBORError("%s of %d items exceeds MAX_ITEMS=%d" % (what, count, MAX_ITEMS))


def _encode_map(obj, out, depth):
    _check_container(len(obj), depth, "map")
    pairs = []
    for key, value in obj.items():
        if not isinstance(key, _KEY_TYPES):
            raise CBORError("map key of type %s not supported" % type(key).__name__)
        encoded = bytearray()
        _encode(key, encoded, depth + 1)
        pairs.append((encoded, value))
    pairs.sort(key=_canonical_order)
    _head(out, _MAP, len(pairs))
    for encoded, value in pairs:
        out += encoded
        _encode(value, out, depth + 1)


def _canonical_order(pair):
    return (len(pair[0]), pair[0])


# ---------------------------------------------------------------- decoding

def loads(data):
    """Decode exactly one CBOR item from data; trailing bytes are an error."""
    buf = memoryview(data)
    obj, end = _decode(buf, 0, 0)
    if end != len(buf):
        raise CBORError("%d trailing bytes at offset %d" % (len(buf) - end, end))
    return obj


def decode_from(buf, offset=0):
    """Decode one item starting at offset; return (obj, offset just after it)."""
    if not isinstance(buf, memoryview):
        buf = memoryview(buf)
    if offset < 0 or offset > len(buf):
        raise CBORError("offset %d outside the buffer of %d bytes" % (offset, len(buf)))
    return _decode(buf, offset, 0)


def iter_decode(buf):
    """Yield the consecutive items of buf; CBORTruncated at a truncated tail."""
    buf = memoryview(buf)
    offset = 0
    while offset < len(buf):
        obj, offset = _decode(buf, offset, 0)
        yield obj


def _need(buf, off, count, what):
    if count > len(buf) - off:
        raise CBORTruncated("truncated %s at offset %d: needs %d bytes, %d left"
                            % (what, off, count, len(buf) - off))


def _read_head(buf, off):
    """Return (major, additional info, argument, offset after the head)."""
    _need(buf, off, 1, "item")
    initial = buf[off]
    major = initial >> 5
    info = initial & 31
    if info < 24:
        return major, info, info, off + 1
    fmt = _ARG_FORMATS.get(info)
    if fmt is not None:
        _need(buf, off + 1, fmt[0], "head")
        return major, info, struct.unpack_from(fmt[1], buf, off + 1)[0], off + 1 + fmt[0]
    if info == _INDEFINITE and _BYTES <= major <= _MAP:
        return major, info, None, off + 1
    raise CBORError("unsupported initial byte 0x%02x at offset %d" % (initial, off))


def _decode(buf, off, depth):
    start = off
    major, info, arg, off = _read_head(buf, off)
    if major == _UINT:
        return arg, off
    if major == _NINT:
        return -1 - arg, off
    if major == _BYTES or major == _TEXT:
        if arg is None:
            return _decode_chunks(buf, off, major)
        return _decode_string(buf, off, major, arg)
    if major == _ARRAY or major == _MAP:
        _check_nesting(depth, start)
        if major == _ARRAY:
            return _decode_array(buf, off, arg, depth + 1)
        return _decode_map(buf, off, arg, depth + 1)
    if major == _SIMPLE and info < 24:
        value = _SIMPLE_VALUES.get(arg, _SIMPLE_VALUES)
        if value is not _SIMPLE_VALUES:
            return value, off
    what = "tag" if major == _TAG else "float or simple value"
    raise CBORError("unsupported %s (0x%02x) at offset %d" % (what, buf[start], start))


_SIMPLE_VALUES = {20: False, 21: True, 22: None}


def _check_nesting(depth, off):
    if depth >= MAX_DEPTH:
        raise CBORError("nesting deeper than MAX_DEPTH=%d at offset %d" % (MAX_DEPTH, off))


def _decode_string(buf, off, major, length):
    _need(buf, off, length, "string")
    chunk = buf[off:off + length]
    if major == _BYTES:
        return bytes(chunk), off + length
    return _text(chunk, off), off + length


def _text(chunk, off):
    try:
        return str(chunk, "utf-8")
    except UnicodeError:
        raise CBORError("invalid UTF-8 in text string at offset %d" % off)


def _decode_chunks(buf, off, major):
    """An indefinite-length string: definite chunks of the same major type."""
    parts = bytearray()
    start = off
    while True:
        _need(buf, off, 1, "indefinite string")
        if buf[off] == _BREAK:
            off += 1
            break
        chunk_major, info, length, data_off = _read_head(buf, off)
        if chunk_major != major or length is None:
            raise CBORError("bad chunk in indefinite string at offset %d" % off)
        _need(buf, data_off, length, "string chunk")
        parts += buf[data_off:data_off + length]
        off = data_off + length
    if major == _BYTES:
        return bytes(parts), off
    return _text(parts, start), off


def _item_count(buf, off, count, per_item, what):
    """Check a definite count against MAX_ITEMS and the bytes left, before use."""
    if count > MAX_ITEMS:
        raise CBORError("%s of %d items at offset %d exceeds MAX_ITEMS=%d"
                        % (what, count, off, MAX_ITEMS))
    _need(buf, off, count * per_item, what)


def _at_break(buf, off, count):
    """True at the break byte ending an indefinite container."""
    _need(buf, off, 1, "indefinite container")
    if buf[off] != _BREAK:
        if count >= MAX_ITEMS:
            raise CBORError("container at offset %d exceeds MAX_ITEMS=%d" % (off, MAX_ITEMS))
        return False
    return True


def _decode_array(buf, off, count, depth):
    items = []
    if count is None:
        while not _at_break(buf, off, len(items)):
            item, off = _decode(buf, off, depth)
            items.append(item)
        return items, off + 1
    _item_count(buf, off, count, 1, "array")
    for _ in range(count):
        item, off = _decode(buf, off, depth)
        items.append(item)
    return items, off


def _decode_map(buf, off, count, depth):
    result = {}
    if count is None:
        while not _at_break(buf, off, len(result)):
            off = _decode_pair(buf, off, depth, result)
        return result, off + 1
    _item_count(buf, off, count, 2, "map")
    for _ in range(count):
        off = _decode_pair(buf, off, depth, result)
    return result, off


def _decode_pair(buf, off, depth, result):
    key, key_end = _decode(buf, off, depth)
    if not isinstance(key, _KEY_TYPES):
        raise CBORError("map key at offset %d is not a str, bytes, int, bool or null" % off)
    if key in result:
        raise CBORError("duplicate map key at offset %d" % off)
    value, off = _decode(buf, key_end, depth)
    result[key] = value
    return off

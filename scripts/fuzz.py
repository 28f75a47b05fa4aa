# Fuzzing (issue 11) with hypothesis: the parsers that read untrusted or damaged
# bytes, each fed random and mutated input; a target "crashes" when it raises
# anything but its documented error, breaks a bound it promises, or takes longer
# than HANG_S on one input. Targets:
#   smtp_server  proto/smtp_server.ServerConnection, random byte streams in bounded
#                reads (tests/test_smtp_server_fuzz.py's property, reused)
#   smtp_client  proto/smtp_client.ClientConnection against hostile replies
#   dns          proto/dns.parse_response on mutated answers (pointers, lengths)
#   cbor         cbor.loads / decode_from / iter_decode: only CBORError
#   conf         conf.check(text): a list of ConfError, never an exception
#   segment      spool/format.SegmentReader over bit-flipped / cut segments
#   recover      Spool.recover() of a spool with damaged segment files
# Prints per target: examples run, crashes, seconds; asserts nothing.
# Usage: .venv/bin/python scripts/fuzz.py [--target NAME|all] [--examples N]
#        [--max-seconds S]   (stops a target after S seconds; says how many ran)
import argparse
import asyncio
import atexit
import io
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (os.path.join(ROOT, "tests"), ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from meta1lite import cbor, compat, conf  # noqa: E402
from meta1lite.proto import dns  # noqa: E402
from meta1lite.proto import replies as R  # noqa: E402
from meta1lite.proto import smtp_client as C  # noqa: E402
from meta1lite.spool import CorruptMessage, Spool  # noqa: E402
from meta1lite.spool import format as fmt  # noqa: E402

HANG_S = 5.0
BATCH = 2000                    # examples per hypothesis run (a fresh seed each)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang("one input took more than %.0f s" % HANG_S)


def guarded(fn, *args):
    """Run fn(*args) under a wall-clock alarm (a hang becomes an exception)."""
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def mutations(base):
    """Mutations of one of the byte strings in base: flips, cuts, insertions, overwrites."""
    edit = st.tuples(st.sampled_from(["flip", "cut", "insert", "set", "ptr", "dup"]),
                     st.integers(0, 1 << 20), st.integers(0, 255), st.binary(max_size=8))

    def apply(args):
        data, edits = args
        data = bytearray(data)
        for kind, at, value, extra in edits:
            if not data:
                data = bytearray(extra)
                continue
            at %= len(data)
            if kind == "flip":
                data[at] ^= 1 << (value % 8)
            elif kind == "cut":
                del data[at:]
            elif kind == "insert":
                data[at:at] = extra
            elif kind == "set":
                data[at] = value
            elif kind == "ptr":             # a DNS compression pointer anywhere
                data[at:at + 2] = bytes([0xC0 | (value & 0x3F), extra[0] if extra else at & 0xFF])
            else:
                data[at:at] = data[at:at + value]
        return bytes(data)
    return st.tuples(st.sampled_from(base), st.lists(edit, max_size=6)).map(apply)


# --- smtp_server ----------------------------------------------------------------

def server_strategy():
    from test_smtp_server_fuzz import chunk
    return st.fixed_dictionaries({
        "parts": st.lists(chunk, max_size=40), "cuts": st.lists(st.integers(1, 97), max_size=20),
        "mode": st.sampled_from(["reject", "normalize"]), "tls": st.booleans(),
        "data": st.data()})


def server_target(kw):
    from test_smtp_server_fuzz import test_random_streams_never_break_the_core as prop
    prop.hypothesis.inner_test(**kw)


# --- smtp_client ----------------------------------------------------------------

REPLIES = [
    b"220 mx.test ESMTP\r\n", b"220-mx.test\r\n", b"250-mx.test hi\r\n", b"250-PIPELINING\r\n",
    b"250-SIZE 1000\r\n", b"250-SIZE x\r\n", b"250-8BITMIME\r\n", b"250-SMTPUTF8\r\n",
    b"250-STARTTLS\r\n", b"250-AUTH PLAIN LOGIN\r\n", b"250-ENHANCEDSTATUSCODES\r\n",
    b"250 OK\r\n", b"250 2.1.0 ok\r\n", b"250 2.0.0 queued\r\n", b"354 go on\r\n",
    b"235 2.7.0 ok\r\n", b"334 VXNlcm5hbWU6\r\n", b"334 \r\n", b"421 4.3.2 bye\r\n",
    b"450 4.2.0 busy\r\n", b"451 4.3.0 later\r\n", b"452 4.5.3 too many\r\n",
    b"500 5.5.1 what\r\n", b"501 bad\r\n", b"502 no\r\n", b"530 5.7.0 tls first\r\n",
    b"535 5.7.8 no\r\n", b"550 5.1.1 unknown\r\n", b"552 5.3.4 big\r\n", b"554 no\r\n",
    b"221 bye\r\n", b"999 odd\r\n", b"25", b"\r\n", b"\n", b"250", b"2501\r\n", b"250-\r\n",
    b"x" * 1100, b"250-" + b"y" * 1100 + b"\r\n", b"250-a\r\n" * 70,
]
reply_chunk = st.one_of(st.sampled_from(REPLIES), st.binary(max_size=40))
RX_BOUND = R.MAX_REPLY_LINE + 4096      # what the reader may hold beyond complete lines


def client_strategy():
    return st.fixed_dictionaries({
        "parts": st.lists(reply_chunk, max_size=40), "cuts": st.lists(st.integers(1, 200), max_size=20),
        "tls": st.sampled_from([C.TLS_OFF, C.TLS_OPPORTUNISTIC, C.TLS_REQUIRED]),
        "creds": st.booleans(), "tx": st.lists(st.tuples(st.integers(1, 5), st.booleans(),
                                                          st.integers(0, 5000)), max_size=4)})


def client_target(kw):
    conn = C.ClientConnection("relay.test", tls=kw["tls"],
                              credentials=("user", "pw") if kw["creds"] else None,
                              auth_without_tls=kw["creds"])
    txs = list(kw["tx"])

    def pump():
        for _ in range(10000):
            ev = conn.next_event()
            if ev is C.NEED_DATA or isinstance(ev, C.Closed):
                return ev
            if isinstance(ev, C.NeedTLS):
                conn.tls_started()
            elif isinstance(ev, C.Ready):
                if txs:
                    n, eight, size = txs.pop(0)
                    conn.start_transaction("t%d" % len(txs), "s@a.example",
                                           ["r%d@b.example" % i for i in range(n)], size, eight)
                else:
                    conn.quit()
            elif isinstance(ev, C.ReadyForBody):
                conn.encode_body_chunk(b".x\r\nbody\r\n.\r\n")
                conn.end_body()
        raise AssertionError("the client core never asked for data")

    stream = b"".join(kw["parts"])
    pos = 0
    for cut in kw["cuts"] + [1024] * (len(stream) // 1024 + 1):
        piece = stream[pos:pos + cut]
        pos += len(piece)
        if not piece:
            continue
        if pump() is not C.NEED_DATA:
            return
        conn.receive_data(piece)
        assert len(conn._replies._rx) - conn._replies._pos <= RX_BOUND + len(piece)
    pump()
    conn.receive_data(b"")
    assert isinstance(pump(), C.Closed)


# --- dns ------------------------------------------------------------------------

QID = 0x1234


def _rr(owner, rtype, ttl, rdata):
    return owner + struct.pack("!HHIH", rtype, dns.CLASS_IN, ttl, len(rdata)) + rdata


def _resp(qtype, records, counts, flags=0x8180):
    q = dns.encode_name("example.org") + struct.pack("!HH", qtype, dns.CLASS_IN)
    return struct.pack("!HHHHHH", QID, flags, 1, *counts) + q + b"".join(records)


P = b"\xc0\x0c"
DNS_BASE = [
    _resp(dns.TYPE_MX, [_rr(P, dns.TYPE_MX, 300, b"\x00\x0a\x03mx1" + P),
                        _rr(P, dns.TYPE_MX, 300, b"\x00\x14\x03mx2" + P),
                        _rr(b"\x03mx1" + P, dns.TYPE_A, 60, b"\xc0\x00\x02\x01"),
                        _rr(b"\x03mx2" + P, dns.TYPE_AAAA, 60, b"\x20\x01" + b"\x00" * 13 + b"\x01")],
          (2, 0, 2)),
    _resp(dns.TYPE_A, [_rr(P, dns.TYPE_CNAME, 30, b"\x01a" + P), _rr(b"\xc0\x29", dns.TYPE_A, 30,
                                                                      b"\x7f\x00\x00\x01")], (2, 0, 0)),
    _resp(dns.TYPE_MX, [_rr(P, dns.TYPE_SOA, 60, b"\x02ns" + P + b"\x02hm" + P + b"\x00" * 20)],
          (0, 1, 0), flags=0x8183),
    _resp(dns.TYPE_MX, [_rr(P, dns.TYPE_MX, 1, b"\x00\x00\xc0\x0c")], (1, 0, 0)),
    _resp(dns.TYPE_MX, [b"\x00" + struct.pack("!HHHIH", dns.TYPE_OPT, 1232, 0, 0, 0)], (0, 0, 1)),
]
QTYPES = [(dns.TYPE_MX, DNS_BASE), (dns.TYPE_A, DNS_BASE), (dns.TYPE_AAAA, DNS_BASE)]


def dns_strategy():
    return st.tuples(st.one_of(mutations(DNS_BASE), st.binary(max_size=600)),
                     st.sampled_from([dns.TYPE_MX, dns.TYPE_A, dns.TYPE_AAAA, dns.TYPE_CNAME]))


def dns_target(args):
    msg, qtype = args
    try:
        dns.parse_response(msg, QID, "example.org", qtype)
    except dns.DNSError:
        pass
    try:
        if len(msg) >= 2:
            dns.tcp_length(msg[:2])
    except dns.DNSError:
        pass


# --- cbor -----------------------------------------------------------------------

values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 64), (1 << 64) - 1), st.text(max_size=20),
              st.binary(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.one_of(st.text(max_size=5), st.integers(-9, 9)),
                                            inner, max_size=5)),
    max_leaves=20)
CBOR_BASE = [cbor.dumps({"id": "ABC123", "i": 0, "s": "sent", "r": None, "a": 1, "n": 5, "t": 17}),
             cbor.dumps([1, [2, [3, [4, [5]]]], {"k": b"\x00" * 30}]),
             b"\x9f\x01\xff", b"\xbf\x61a\x01\xff", b"\x5f\x41a\xff", b"\xc1\x1a\x00\x00\x00\x01",
             b"\xfb" + b"\x00" * 8, b"\x9b" + b"\xff" * 8, b"\x81" * 40 + b"\x00"]


def cbor_strategy():
    return st.one_of(st.binary(max_size=200), mutations(CBOR_BASE),
                     values.map(lambda v: ("roundtrip", v)))


def cbor_target(data):
    if isinstance(data, tuple):             # a valid value: encode, decode back equal
        try:
            enc = cbor.dumps(data[1])
        except cbor.CBORError:
            return
        back = cbor.loads(enc)
        assert cbor.dumps(back) == enc
        return
    for call in (cbor.loads, cbor.decode_from, lambda d: list(cbor.iter_decode(d))):
        try:
            call(data)
        except cbor.CBORError:
            pass


# --- conf -----------------------------------------------------------------------

with open(os.path.join(ROOT, "conf", "meta1lite.conf"), "rb") as _f:
    CONF_SAMPLE = _f.read()
CONF_TOKENS = ["hostname", "spool", "smtps", "smar", "smtpc", "qmgr", "route", "credentials",
               "listen", "relay_from", "max_message_size", "max_queue_size", "via", "tls", "auth",
               "=", ";", "{", "}", "\"", "\"x\"", "#", "\n", " ", "1", "10M", "5m", "99999999999999999",
               "-1", "127.0.0.1:25", "[::1]:25", "::1/128", "0.0.0.0/0", "*", "\"*\"", "yes", "\\",
               "\t", "\r", "\x00", "é", "\ud7ff", "include", "/", "//", "/*", "*/", ","]


def conf_strategy():
    return st.one_of(st.text(max_size=300),
                     st.lists(st.sampled_from(CONF_TOKENS), max_size=60).map("".join),
                     mutations([CONF_SAMPLE]).map(lambda b: b.decode("utf-8", "replace")))


def conf_target(text):
    errors = conf.check(text)
    assert isinstance(errors, list), errors
    for e in errors:
        assert isinstance(e, conf.ConfError), e


# --- segment / recover ----------------------------------------------------------

_SPOOL = {}
TMPFS = "/dev/shm"              # recover: the spools live in RAM where there is a tmpfs


def _spool_dir():
    """A fresh directory for the fuzzed spools, on TMPFS when it is writable (a
    recover example replays the spool twice and reads every body back: the fsyncs
    and file opens on disk made it 1.5x slower); removed at exit."""
    fast = TMPFS if os.path.isdir(TMPFS) and os.access(TMPFS, os.W_OK) else None
    top = tempfile.mkdtemp(prefix="m1l-fuzz-", dir=fast)
    atexit.register(shutil.rmtree, top, True)
    return top


def base_spool():
    """A spool with messages over several segments, some delivered (built once)."""
    if "path" not in _SPOOL:
        path = os.path.join(_spool_dir(), "base")
        sp = Spool(path, max_queue_size=1 << 30, max_messages=100000, min_free_space=0,
                   segment_size=4096, chunk_size=300)
        sp.recover()

        async def fill():
            ids = []
            for i in range(25):
                w = sp.new_message()
                w.write(bytes([i % 250 + 1]) * (200 + 97 * i))
                ids.append(await sp.commit(w, "s@x.example", ["a@x", "b@y"]))
            for q in ids[::3]:
                await sp.record_attempt(q, [(0, "sent", "250", None), (1, "deferred", "451", 5)])
            sp.hold(ids[1])
        asyncio.run(fill())
        sp.close()
        segs = os.path.join(path, "seg")
        _SPOOL["path"] = path
        _SPOOL["files"] = sorted(os.path.join(segs, n) for n in os.listdir(segs))
        _SPOOL["bytes"] = [open(p, "rb").read() for p in _SPOOL["files"]]
        _SPOOL["gen"] = [fmt.parse_head(b[:fmt.HEAD_SIZE]) for b in _SPOOL["bytes"]]
    return _SPOOL


def segment_strategy():
    base = base_spool()
    return st.tuples(st.integers(0, len(base["bytes"]) - 1), st.lists(
        st.tuples(st.integers(0, 1 << 20), st.integers(0, 7), st.sampled_from(["flip", "cut", "junk"]),
                  st.binary(min_size=1, max_size=30)), min_size=1, max_size=6))


def _damage(data, edits):
    data = bytearray(data)
    for at, bit, kind, extra in edits:
        if not data:
            break
        at %= len(data)
        if kind == "flip":
            data[at] ^= 1 << bit
        elif kind == "cut":
            del data[at:]
        else:
            data[at:at + len(extra)] = extra
    return bytes(data)


def segment_target(args):
    which, edits = args
    base = base_spool()
    data = _damage(base["bytes"][which], edits)
    head = base["gen"][which]
    gen = head[2] if head else 0
    reader = fmt.SegmentReader(io.BytesIO(data), len(data), gen, 0)
    for _ in reader.frames():
        pass
    assert 0 <= reader.end <= len(data)


def recover_target(args):
    which, edits = args
    base = base_spool()
    work = base["path"] + "-work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base["path"], work)
    path = os.path.join(work, "seg", os.path.basename(base["files"][which]))
    with open(path, "r+b") as f:
        data = _damage(f.read(), edits)
        f.seek(0)
        f.truncate()
        f.write(data)
    for _ in range(2):                      # a second start settles too
        sp = Spool(work, max_queue_size=1 << 30, max_messages=100000, min_free_space=0,
                   segment_size=4096, chunk_size=300)
        sp.recover()
        for msg in sp.messages():
            try:
                assert len(b"".join(sp.read_body(msg.id))) == msg.size
            except CorruptMessage:
                pass
        sp.close()


TARGETS = {
    "smtp_server": (server_strategy, server_target),
    "smtp_client": (client_strategy, client_target),
    "dns": (dns_strategy, dns_target),
    "cbor": (cbor_strategy, cbor_target),
    "conf": (conf_strategy, conf_target),
    "segment": (segment_strategy, segment_target),
    "recover": (segment_strategy, recover_target),
}


def fuzz(name, examples, max_seconds=None, verbose=False):
    """Run one target; returns {"target", "examples", "crashes", "seconds", "failures"}."""
    strategy, target = TARGETS[name]
    compat.log.stream = io.StringIO() if not verbose else None   # recovery's warnings
    strategy = strategy()
    old = signal.signal(signal.SIGALRM, _alarm)
    ran, crashes, failures = [0], 0, []
    started = time.time()
    try:
        while ran[0] < examples and (max_seconds is None or time.time() - started < max_seconds):
            batch = min(BATCH, examples - ran[0])

            @settings(max_examples=batch, deadline=None, database=None, derandomize=False,
                      phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
            @given(strategy)
            def run(value):
                ran[0] += 1
                if compat.log.stream is not None:
                    compat.log.stream.seek(0)
                    compat.log.stream.truncate()
                guarded(target, value)
            before = ran[0]
            try:
                run()
            except Exception as exc:        # a crash: hypothesis shrank it and re-raised it
                crashes += 1
                failures.append("".join(traceback.format_exception_only(type(exc), exc)).strip())
                if verbose:
                    traceback.print_exc()
            if ran[0] == before:
                break
    finally:
        signal.signal(signal.SIGALRM, old)
    return {"target": name, "examples": ran[0], "crashes": crashes,
            "seconds": round(time.time() - started, 1), "failures": failures}


def main():
    ap = argparse.ArgumentParser(description="hypothesis fuzzing of meta1lite's parsers")
    ap.add_argument("--target", default="all", choices=["all"] + sorted(TARGETS))
    ap.add_argument("--examples", type=int, default=100000)
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    names = sorted(TARGETS) if args.target == "all" else [args.target]
    print("%-12s %10s %8s %9s" % ("target", "examples", "crashes", "seconds"), flush=True)
    for name in names:
        r = fuzz(name, args.examples, args.max_seconds, args.verbose)
        print("%-12s %10d %8d %9.1f" % (name, r["examples"], r["crashes"], r["seconds"]), flush=True)
        for failure in r["failures"][:5]:
            print("    " + failure.replace("\n", "\n    "), flush=True)


if __name__ == "__main__":
    main()

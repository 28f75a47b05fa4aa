# Durability of the queue, on both runtimes (issue 3, "Must show"): kill -9 under
# concurrent load loses no acknowledged message; the order proof (a counting shim
# shows every 250 is preceded by the fsync of the frames it acknowledges), with
# fsyncs per message; damaged queue files at startup end in corrupt/ and never stop
# the daemon. CPython-only driver; the daemon runs on CPython or MicroPython.
import os
import random
import re
import smtplib
import sys
import threading
import time

import pytest
from helpers.daemon import ROUTER_HEAP, RUNTIMES, UPY_HEAP, Daemon, config_text, free_port
from helpers.upy import ROOT, find_micropython, micropython_env, run_micropython

from meta1lite.spool import Spool
from meta1lite.spool import format as fmt

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.join(HERE, "helpers", "shim_daemon.py")
TRACE_ENV = "META1LITE_SHIM_TRACE"
# The MicroPython daemon: a board-equivalent heap (daemon.UPY_HEAP); the load tests
# (8 or 20 concurrent sessions, hundreds of queued messages) get a router's (1M).
HEAP = UPY_HEAP
LOAD_HEAP = ROUTER_HEAP
KILL_ROUNDS = int(os.environ.get("META1LITE_KILL_ROUNDS", "15"))
KILL_CLIENTS = 8
MAX_QUEUE_SIZE = 500 * 1024 * 1024
MAX_MESSAGES = 100000
MIN_FREE = 64 * 1024
QUEUED_RE = re.compile(rb"queued as ([0-9A-Z]+)")
DEADLINE_S = 60
SMTP_TIMEOUT_S = 30


_private_bundle = []


def private_bundle():
    """A .mpy bundle of this test run only. tests/helpers/daemon.py rebuilds one shared folder
    in every pytest process, so parallel runs can swap modules under a starting
    daemon ("no module named meta1lite.confschema"); this one nobody else touches."""
    if not _private_bundle:
        import subprocess
        import tempfile
        out = tempfile.mkdtemp(prefix="meta1lite-bundle-")
        subprocess.run([sys.executable, os.path.join(ROOT, "firmware", "build_bundle.py"),
                        "--out", out], check=True, capture_output=True)
        _private_bundle.append(out)
    return _private_bundle[0]


class LocalDaemon(Daemon):
    """tests/daemon.Daemon, with MicroPython running from private_bundle()."""

    def command(self):
        if self.runtime == "cpython":
            return Daemon.command(self)
        exe = find_micropython()
        if exe is None:
            run_micropython(["-c", "pass"])     # fails in CI, skips elsewhere
        start = [self.entry] if self.entry else ["-m", "meta1lite"]
        return ([exe, "-X", "heapsize=" + self.heap] + start + ["run", "-c", self.conf_path],
                micropython_env(private_bundle()))


def durable_config(spool, port):
    """Big queue limits, no per-client throttling, deliveries to a closed port (so
    messages stay queued, deferred) and no retry within the test."""
    return config_text(
        spool, port,
        smtps_extra="max_connections = 60; max_connections_per_client = 60;"
                    " max_messages_per_client_per_minute = 1000000;",
        top_extra='qmgr { max_messages = %d; max_queue_size = 500M; retry_min = 1h; }\n'
                  'smar { route "*" { via = "[127.0.0.1]:1"; } }' % MAX_MESSAGES)


def message(token, size=2048):
    """A message of about `size` bytes with CRLF lines, unique by token, with Date:
    and Message-ID: so that the relay adds only its Received: field."""
    head = ("From: <sender@client.test>\r\nTo: <rcpt@example.org>\r\nSubject: %s\r\n"
            "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <%s@client.test>\r\n\r\n"
            % (token, token)).encode()
    line = (token.encode() + b" " + b"x" * 70)[:72] + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def strip_received(stored):
    """The stored message without the Received: field the relay put first."""
    assert stored.startswith(b"Received:"), stored[:200]
    pos = 0
    while True:
        pos = stored.index(b"\r\n", pos) + 2
        if stored[pos:pos + 1] not in (b" ", b"\t"):
            return stored[pos:]


def load_spool(path):
    """Recover the spool in this process (daemon stopped); returns the Spool."""
    spool = Spool(path, MAX_QUEUE_SIZE, MAX_MESSAGES, MIN_FREE)
    spool.recover()
    return spool


def body_of(spool, queue_id):
    return b"".join(spool.read_body(queue_id))


def send_one(client, token, size=2048):
    """(queue id or None, message bytes) of one message on an open session."""
    data = message(token, size)
    client.mail("sender@client.test")
    client.rcpt("rcpt@example.org")
    code, reply = client.data(data)
    found = QUEUED_RE.search(reply) if code == 250 else None
    return (found.group(1).decode() if found else None), data


def connect(port):
    client = smtplib.SMTP("127.0.0.1", port, timeout=SMTP_TIMEOUT_S)
    client.ehlo("client.test")
    return client


# --- kill -9 under load ---------------------------------------------------------

class Load:
    """KILL_CLIENTS threads sending messages in a loop; records every 250's queue ID."""

    def __init__(self, port, round_no):
        self.port = port
        self.round_no = round_no
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked = {}
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                        for n in range(KILL_CLIENTS)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def _client(self, n):
        count = 0
        while not self.stop.is_set():
            try:
                client = connect(self.port)
                while not self.stop.is_set():
                    count += 1
                    token = "r%d-c%d-m%d-%s" % (self.round_no, n, count, os.urandom(4).hex())
                    queue_id, data = send_one(client, token)
                    if queue_id:
                        with self.lock:
                            self.acked[queue_id] = data
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)

    def wait_acks(self, count, deadline):
        while time.time() < deadline:
            with self.lock:
                if len(self.acked) >= count:
                    return True
            time.sleep(0.02)
        return False

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(SMTP_TIMEOUT_S + 5)
        return dict(self.acked)


def check_and_empty(spool_dir, acked, rng):
    """After a round: every acknowledged message is queued, a sample byte-identical;
    then empty the queue (keeps the MicroPython daemon's index small over the rounds).
    Returns (lost queue IDs, queued but unacknowledged count)."""
    spool = load_spool(spool_dir)
    try:
        queued = set(m.id for m in spool.messages())
        for queue_id in rng.sample(sorted(acked), min(10, len(acked))):
            assert strip_received(body_of(spool, queue_id)) == acked[queue_id], queue_id
        for queue_id in queued:
            spool.delete(queue_id)
    finally:
        spool.close()
    return sorted(set(acked) - queued), len(queued - set(acked))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_kill_9_under_load_loses_no_acknowledged_message(runtime, tmp_path):
    spool_dir = str(tmp_path / "spool")
    port = free_port()
    daemon = LocalDaemon(runtime, tmp_path, durable_config(spool_dir, port), port, heap=LOAD_HEAP)
    rng = random.Random()
    total, extra, lost = 0, 0, []
    for round_no in range(KILL_ROUNDS):
        daemon.start()
        load = Load(port, round_no)
        load.start()
        assert load.wait_acks(1, time.time() + DEADLINE_S), daemon.log()[-3000:]
        time.sleep(rng.uniform(0.0, 1.0))
        daemon.kill()                    # SIGKILL at a random moment under load
        acked = load.finish()
        daemon.stop()                    # closes the log file; the process is gone
        daemon.start()                   # the daemon's own recovery of the killed queue
        daemon.stop()
        round_lost, round_extra = check_and_empty(spool_dir, acked, rng)
        total, extra, lost = total + len(acked), extra + round_extra, lost + round_lost
    print("\n%s: %d kill -9 rounds under load of %d clients: %d acknowledged, %d lost,"
          " %d queued unacknowledged" % (runtime, KILL_ROUNDS, KILL_CLIENTS, total, len(lost), extra))
    assert not lost, "%d acknowledged messages lost: %s" % (len(lost), lost[:10])
    assert total >= KILL_ROUNDS
    assert "recovered" in daemon.log()


# --- the order proof: no 250 before the fsync it depends on ------------------------

def read_trace(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def check_order(events, acked):
    """Every ACK: commit started and ended before it, and each file holding one of
    the message's frames had an fsync begun after the last append to it and ended
    before the ACK (the fsyncs may run in a worker thread: SYNC-BEGIN / SYNC)."""
    for at, event in enumerate(events):
        if event[0] != "ACK":
            continue
        queue_id = event[1]
        tag = str(fmt.tag_of(queue_id))
        before = events[:at]
        assert ["COMMIT-START", queue_id] in before, queue_id
        assert ["COMMIT-END", queue_id] in before, queue_id
        last_append = {}
        for i, ev in enumerate(before):
            if ev[0] == "APPEND" and ev[2] == tag:
                last_append[ev[3]] = i
        assert any(ev[0] == "APPEND" and ev[1] == "E" and ev[2] == tag for ev in before), queue_id
        ended = set(ev[1] for ev in before if ev[0] == "SYNC" and ev[2] == "file")
        for fid, i in last_append.items():
            begun = [ev[1] for ev in before[i + 1:]
                     if ev[0] == "SYNC-BEGIN" and ev[2] == "file" and ev[3] == fid]
            assert [n for n in begun if n in ended], \
                "%s: 250 sent before the fsync of its frames" % queue_id
    assert sorted(ev[1] for ev in events if ev[0] == "ACK") == sorted(acked)


def syncs_per_message(events, start, stop):
    """(acks, file syncs, dir syncs, file syncs while a commit was open) in a phase;
    the last excludes the qmgr's syncs of delivery-attempt records."""
    phase = events[events.index(["PHASE", start]):events.index(["PHASE", stop])]
    acks = len([ev for ev in phase if ev[0] == "ACK"])
    files = len([ev for ev in phase if ev[0] == "SYNC" and ev[2] == "file"])
    dirs = len([ev for ev in phase if ev[0] == "SYNC" and ev[2] == "dir"])
    open_commits, in_commit = set(), 0
    for ev in phase:
        if ev[0] == "COMMIT-START":
            open_commits.add(ev[1])
        elif ev[0] == "COMMIT-END":
            open_commits.discard(ev[1])
        elif ev[0] == "SYNC" and open_commits:
            in_commit += 1
    return acks, files, dirs, in_commit


def concurrent_burst(port, clients, round_no):
    """`clients` sessions send DATA at the same moment; returns {queue id: bytes}."""
    barrier = threading.Barrier(clients)
    results, errors = {}, []

    def one(n):
        try:
            client = connect(port)
            client.mail("sender@client.test")
            client.rcpt("rcpt@example.org")
            data = message("burst%d-%d" % (round_no, n))
            barrier.wait(DEADLINE_S)
            code, reply = client.data(data)
            results[QUEUED_RE.search(reply).group(1).decode()] = data
            client.quit()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(exc))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S + SMTP_TIMEOUT_S)
    assert not errors, errors
    return results


def mark(trace, text):
    with open(trace, "a") as f:
        f.write("PHASE %s\n" % text)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_250_follows_the_fsync_of_its_message(runtime, tmp_path):
    spool_dir, trace = str(tmp_path / "spool"), str(tmp_path / "trace")
    port = free_port()
    daemon = LocalDaemon(runtime, tmp_path, durable_config(spool_dir, port), port, heap=LOAD_HEAP,
                    env={TRACE_ENV: trace}, entry=SHIM)
    acked = {}
    with daemon:
        mark(trace, "single")
        client = connect(port)
        for n in range(20):
            queue_id, data = send_one(client, "single-%d" % n)
            acked[queue_id] = data
        client.quit()
        mark(trace, "concurrent")
        for round_no in range(3):
            acked.update(concurrent_burst(port, 20, round_no))
        mark(trace, "end")
    events = read_trace(trace)
    assert ["START"] in events, "the shim did not run:\n" + daemon.log()[-2000:]
    check_order(events, acked)
    single = syncs_per_message(events, "single", "concurrent")
    burst = syncs_per_message(events, "concurrent", "end")
    for name, (acks, files, dirs, in_commit) in (("1 client", single), ("20 concurrent", burst)):
        sys.stdout.write("\n%s, %s: %d messages, %d file + %d dir syncs (%.2f per message),"
                         " %d during commits (%.2f per message)" % (
                             runtime, name, acks, files, dirs, (files + dirs) / acks, in_commit,
                             in_commit / acks))
    assert single[0] == 20 and burst[0] == 60
    spool = load_spool(spool_dir)
    assert set(m.id for m in spool.messages()) >= set(acked)


# --- damaged queue files at startup --------------------------------------------------

def segment_frames(path):
    """[(type, tag, offset, length)] of the valid frames of a journal segment."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = fmt.parse_head(f.read(fmt.HEAD_SIZE))
        status, frame = fmt.read_frame(f, 0, size, None)
        assert status == fmt.OK and head is not None, path
        reader = fmt.SegmentReader(f, size, head[1], fmt.HEAD_SIZE + frame[3])
        return [(ftype, tag, pos, length) for ftype, tag, pos, length, _p in reader.frames()]


def journal_layout(seg_dir):
    """{segment path: frames}, in file-name order (a fresh spool: creation order)."""
    return dict((os.path.join(seg_dir, name), segment_frames(os.path.join(seg_dir, name)))
                for name in sorted(os.listdir(seg_dir)))


def pick_damage(layout, queue_ids):
    """(spanning message, its first segment, the cut offset; bit-flip message, path, offset).

    The spanning message has chunks in one segment and its envelope in a later one:
    cutting the first segment inside its chunks damages it and nothing else. The
    bit-flipped message is another one whose chunk frames are all in one segment."""
    tags = dict((fmt.tag_of(q), q) for q in queue_ids)
    env_seg = dict((tags[t], p) for p, frames in layout.items()
                   for ftype, t, _pos, _len in frames if ftype == fmt.T_ENVELOPE and t in tags)
    span = None
    for path, frames in layout.items():
        chunks = [f for f in frames if f[0] == fmt.T_CHUNK and f[1] in tags]
        later_envs = [f for f in frames if f[0] == fmt.T_ENVELOPE]
        if chunks and (not later_envs or later_envs[-1][2] < chunks[-1][2]):
            owner = tags[chunks[-1][1]]
            mine = [f for f in chunks if f[1] == chunks[-1][1]]
            if env_seg.get(owner) != path and len(mine) >= 2:
                cut = mine[len(mine) // 2]
                span = (owner, path, cut[2] + fmt.HEAD_SIZE + cut[3] // 2)
                break
    assert span is not None, "no message spans two segments"
    for path, frames in layout.items():
        for queue_id in queue_ids:
            mine = [f for f in frames if f[0] == fmt.T_CHUNK and f[1] == fmt.tag_of(queue_id)]
            if queue_id != span[0] and len(mine) >= 3 and env_seg.get(queue_id) == path \
                    and path != span[1]:
                hit = mine[len(mine) // 2]
                return span + (queue_id, path, hit[2] + fmt.HEAD_SIZE + hit[3] // 2)
    raise AssertionError("no message to bit-flip")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_truncated_and_bit_flipped_queue_files_go_to_corrupt(runtime, tmp_path):
    spool_dir = str(tmp_path / "spool")
    port = free_port()
    daemon = LocalDaemon(runtime, tmp_path, durable_config(spool_dir, port), port, heap=HEAP)
    sent = {}
    with daemon:
        client = connect(port)
        for n in range(8):
            queue_id, data = send_one(client, "big-%d" % n, size=100 * 1024)
            assert queue_id, "message %d refused" % n
            sent[queue_id] = data
        client.quit()
    span_id, span_path, cut, flip_id, flip_path, flip_at = pick_damage(
        journal_layout(os.path.join(spool_dir, "seg")), list(sent))
    os.truncate(span_path, cut)
    with open(flip_path, "r+b") as f:
        f.seek(flip_at)
        data = f.read(4)
        f.seek(flip_at)
        f.write(bytes(b ^ 0xFF for b in data))
    with daemon:
        client = connect(port)
        new_id, new_data = send_one(client, "after-damage")
        client.quit()
        assert new_id, "the daemon does not accept mail after the damage"
    log = daemon.log()
    corrupt = os.listdir(os.path.join(spool_dir, "corrupt"))
    for damaged in (span_id, flip_id):
        assert damaged in corrupt, (damaged, corrupt, log[-3000:])
        assert "corrupt/%s" % damaged in log
    flipped_region = [n for n in corrupt if n.startswith("seg-") and n != flip_id]
    assert flipped_region and "corrupt/%s" % flipped_region[0] in log, corrupt
    spool = load_spool(spool_dir)
    queued = set(m.id for m in spool.messages())
    intact = set(sent) - set([span_id, flip_id])
    assert queued == intact | set([new_id]), (queued, intact)
    for queue_id in intact:
        assert strip_received(body_of(spool, queue_id)) == sent[queue_id]

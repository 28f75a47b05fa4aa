# Crash loop (issue 11): the real daemon (CPython, or the MicroPython unix port from
# the .mpy bundle) under concurrent load, SIGKILLed at a random moment, restarted,
# for N rounds; it relays to an aiosmtpd next hop on loopback. At the end a last
# start drains the queue and the figures are printed: acknowledged (250 to a
# client), delivered (acknowledged messages the next hop got at least once), lost
# (acknowledged, never delivered and not in the queue), still queued (acknowledged,
# not delivered when the drain gave up, still in the queue), duplicated (deliveries
# beyond the first),
# delivered unacknowledged (queued, killed before the 250: allowed); and from the
# daemon's log over all rounds: tracebacks, scheduler errors, MemoryError lines.
# Prints figures, asserts nothing; tests/test_harness.py runs it with small N.
# Usage: .venv/bin/python scripts/crash_loop.py [--rounds 200] [--clients 8]
#        [--runtime cpython|micropython] [--max-delay 1.0] [--seed S]
import argparse
import collections
import os
import random
import re
import shutil
import smtplib
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (os.path.join(ROOT, "tests"), ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from helpers.daemon import ROUTER_HEAP, Daemon, config_text, free_port  # noqa: E402
from helpers.nexthop import NextHop  # noqa: E402

SMTP_TIMEOUT_S = 30
FIRST_ACK_S = 20
STALL_S = 30             # the final drain gives up after this long without a delivery
QUEUED_RE = re.compile(rb"queued as ([0-9A-Z]+)")
TOKEN_RE = re.compile(rb"\r\nSubject: (crash-[0-9a-z-]+)\r\n")


def message(token, size):
    head = ("From: <sender@client.test>\r\nTo: <rcpt@example.org>\r\nSubject: %s\r\n"
            "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <%s@client.test>\r\n\r\n"
            % (token, token)).encode()
    line = b"x" * 70 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def crash_config(spool, port, hop_port, clients, max_messages):
    return config_text(
        spool, port,
        smtps_extra="max_connections = %d; max_connections_per_client = %d;"
                    " max_messages_per_client_per_minute = 1000000;" % (clients + 10, clients + 10),
        top_extra='qmgr { max_messages = %d; max_queue_size = 500M; retry_min = 1s;'
                  ' retry_max = 2s; }\n'
                  'smtpc { tls = off; }\n'
                  'smar { route "*" { via = "[127.0.0.1]:%d"; tls = off; } }'
        % (max_messages, hop_port))


class Load:
    """`clients` threads sending in a loop until stopped; records every acknowledged token."""

    def __init__(self, port, round_no, clients, size, acked, lock):
        self.port, self.round_no, self.size = port, round_no, size
        self.acked, self.lock = acked, lock
        self.count = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                        for n in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self, n):
        count = 0
        while not self.stop.is_set():
            try:
                client = smtplib.SMTP("127.0.0.1", self.port, timeout=SMTP_TIMEOUT_S)
                client.ehlo("client.test")
                while not self.stop.is_set():
                    count += 1
                    token = "crash-r%d-c%d-m%d" % (self.round_no, n, count)
                    client.mail("sender@client.test")
                    client.rcpt("rcpt@example.org")
                    code, reply = client.data(message(token, self.size))
                    if code == 250:
                        found = QUEUED_RE.search(reply)
                        with self.lock:
                            self.acked[token] = found.group(1).decode() if found else None
                            self.count += 1
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(SMTP_TIMEOUT_S + 5)


def delivered_tokens(hop):
    with hop.lock:
        contents = [m.content for m in hop.messages]
    out = collections.Counter()
    for content in contents:
        found = TOKEN_RE.search(b"\r\n" + content)
        out[found.group(1).decode() if found else "?"] += 1
    return out


def still_queued(spool, queue_ids):
    """The queue IDs among queue_ids that the spool still holds (the daemon stopped):
    not delivered when the drain gave up, yet not lost."""
    from meta1lite.spool import Spool
    sp = Spool(spool, 500 * 1024 * 1024, 100000, 0)
    try:
        sp.recover()
        return set(q for q in queue_ids if q and sp.get(q) is not None)
    finally:
        sp.close()


def run(rounds=200, clients=8, runtime="cpython", max_delay=1.0, size=2048, seed=None,
        drain_s=1800, heap=ROUTER_HEAP, workdir=None, progress=None,
        max_messages=100000):
    """The crash loop; returns a dict of figures."""
    rng = random.Random(seed)
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="m1l-crash-")
    spool = os.path.join(workdir, "spool")
    port = free_port()
    acked, lock = {}, threading.Lock()
    started = time.time()
    no_ack_rounds = 0
    with NextHop("127.0.0.1") as hop:
        daemon = Daemon(runtime, workdir, crash_config(spool, port, hop.port, clients, max_messages), port,
                        heap=heap)
        try:
            for round_no in range(rounds):
                daemon.start()
                load = Load(port, round_no, clients, size, acked, lock)
                deadline = time.time() + FIRST_ACK_S
                while load.count == 0 and time.time() < deadline:
                    time.sleep(0.01)
                no_ack_rounds += load.count == 0
                time.sleep(rng.uniform(0.0, max_delay))
                daemon.kill()                   # SIGKILL at a random moment under load
                load.finish()
                daemon.stop()                   # closes the log file
                if progress and (round_no + 1) % progress == 0:
                    print("round %d: %d acknowledged, %d deliveries so far, %.0f s"
                          % (round_no + 1, len(acked), len(hop.messages), time.time() - started),
                          flush=True)
            daemon.start()                      # the last start: recover and drain
            deadline, seen, last = time.time() + drain_s, -1, time.time()
            while time.time() < deadline and time.time() - last < STALL_S:
                if set(acked) <= set(delivered_tokens(hop)):
                    break
                if len(hop.messages) != seen:       # the backlog still moves: keep waiting
                    seen, last = len(hop.messages), time.time()
                time.sleep(0.2)
            time.sleep(1.0)                     # deliveries in flight
            daemon.stop()
            log = daemon.log()
        finally:
            daemon.kill()
            daemon.stop()
        got = delivered_tokens(hop)
    missing = sorted(set(acked) - set(got))
    queued = still_queued(spool, [acked[t] for t in missing]) if missing else set()
    lost = [t for t in missing if acked[t] not in queued]
    figures = {
        "runtime": runtime, "rounds": rounds, "clients": clients,
        "acknowledged": len(acked),
        "delivered": len(set(acked) & set(got)),
        "still_queued": len(missing) - len(lost),
        "lost": len(lost),
        "duplicated": sum(n - 1 for n in got.values() if n > 1),
        "delivered_unacknowledged": len(set(got) - set(acked)),
        "rounds_without_ack": no_ack_rounds,
        "seconds": round(time.time() - started, 1),
        "lost_tokens": lost[:20],
        "tracebacks": log.count("Traceback"),
        "scheduler_errors": log.count("error: scheduler:"),
        "memory_errors": sum(1 for line in log.splitlines()
                             if "MemoryError" in line or "memory allocation failed" in line),
        "workdir": workdir,
    }
    if own and not missing:
        shutil.rmtree(workdir, ignore_errors=True)
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--runtime", choices=("cpython", "micropython"), default="cpython")
    ap.add_argument("--max-delay", type=float, default=1.0,
                    help="kill at uniform(0, this) seconds after the round's first 250")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--heap", default=ROUTER_HEAP, help="MicroPython heap")
    ap.add_argument("--max-messages", type=int, default=100000, help="qmgr.max_messages")
    args = ap.parse_args()
    f = run(args.rounds, args.clients, args.runtime, args.max_delay, args.size, args.seed,
            heap=args.heap, progress=max(1, args.rounds // 10), max_messages=args.max_messages)
    print("crash loop (%s): %d rounds, %d clients, %.1f s" % (f["runtime"], f["rounds"],
                                                              f["clients"], f["seconds"]))
    for key in ("acknowledged", "delivered", "still_queued", "lost", "duplicated", "delivered_unacknowledged",
                "rounds_without_ack", "tracebacks", "scheduler_errors", "memory_errors"):
        print("  %-26s %d" % (key, f[key]))
    if f["lost"]:
        print("  lost (first 20): %s\n  kept: %s" % (" ".join(f["lost_tokens"]), f["workdir"]))


if __name__ == "__main__":
    main()

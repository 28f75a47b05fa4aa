#!/usr/bin/env python3
# The router's figures (issue 10), on the MicroPython unix port from the .mpy bundle:
#   1. the smallest -X heapsize at which the daemon, with QUEUED messages in its
#      queue (next hop down: every one is tried and deferred at start), takes
#      SESSIONS concurrent SMTP sessions of MESSAGES messages each, all 250, with no
#      MemoryError (bisected);
#      (--drain: instead, the smallest heap at which the daemon started with the
#      QUEUED messages, all due, delivers them all to a next hop, its scheduler never
#      failing);
#   2. the smallest heap and the wall time of `micropython -m meta1lite sendmail`
#      for one message, with the daemon down (sendmail commits to the journal itself,
#      recovering the queue's index first) and with it up (over the control channel).
# Prints figures; asserts nothing. Usage:
#   .venv/bin/python benchmarks/router.py [--queued 1000] [--sessions 4] [--deferred] [--lo 256K] [--hi 8M]
#       [--drain] [--no-sendmail]
import argparse
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import _common as C
from helpers.backlog import BODY, fill_spool

MESSAGE = b"To: ops@dest.test\nSubject: cron\n\nbackup done\n"
OUT_OF_MEMORY = ("MemoryError", "memory allocation failed", "out of memory")
SMTP_TIMEOUT_S = 60
TIME_RUNS = 5
DRAIN_STALL_S = 30


def config(spool, port, control):
    return C.config_text(spool, port, smtps_extra="max_connections = 8; max_connections_per_client = 8;"
                         " max_messages_per_client_per_minute = 100000;",
                         top_extra="control = 127.0.0.1:%d;\nqmgr { retry_min = 1h; max_messages = 5000;"
                                   " max_queue_size = 100M; }\nsmar { route \"*\" { via = \"[127.0.0.1]:%d\"; } }"
                                   % (control, C.free_port()))


def sessions_pass(port, sessions, messages):
    failures = []

    def client(n):
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=SMTP_TIMEOUT_S) as s:
                for k in range(messages):
                    s.sendmail("a@relay.test", ["b%d-%d@dest.test" % (n, k)], BODY)
        except (OSError, smtplib.SMTPException) as exc:
            failures.append(repr(exc))
    threads = [threading.Thread(target=client, args=(n,)) for n in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SMTP_TIMEOUT_S * messages)
    return failures


def drain_run(template, heap, args):
    """True if the daemon at heap, started with the queue loaded, delivers every
    queued message to an aiosmtpd next hop (no DRAIN_STALL_S without a delivery) and
    its scheduler never fails; MemoryError lines of deliveries (retried) are counted."""
    from helpers.nexthop import NextHop
    work = tempfile.mkdtemp(prefix="m1l-router-")
    spool = os.path.join(work, "spool")
    shutil.copytree(template, spool)
    with NextHop("127.0.0.1") as hop:
        port = C.free_port()
        conf = C.config_text(spool, port, top_extra=(
            "qmgr { max_messages = 5000; max_queue_size = 100M; retry_min = 1s; retry_max = 2s; }\n"
            "smtpc { tls = off; }\nsmar { route \"*\" { via = \"[127.0.0.1]:%d\"; tls = off; } }" % hop.port))
        daemon = C.Daemon("micropython", work, conf, port, heap="%dK" % (heap // 1024))
        try:
            daemon.start()
            started = seen = time.time()
            while len(hop.messages) < args.queued and time.time() - seen < DRAIN_STALL_S:
                count = len(hop.messages)
                time.sleep(0.5)
                seen = time.time() if len(hop.messages) != count else seen
            took = time.time() - started
        except AssertionError:
            return False, "did not start"
        finally:
            daemon.stop()
            log = daemon.log()
            shutil.rmtree(work, ignore_errors=True)
        got = len(set(m.rcpt_tos[0] for m in hop.messages))
    oom = sum(1 for line in log.splitlines() if any(w in line for w in OUT_OF_MEMORY))
    failed = log.count("error: scheduler:")
    ok = got == args.queued and not failed
    return ok, "%d/%d delivered in %.0f s, %d scheduler errors, %d MemoryError lines" % (
        got, args.queued, took, failed, oom)


def daemon_run(template, heap, args):
    """True if the daemon at heap takes the sessions with the queue loaded."""
    work = tempfile.mkdtemp(prefix="m1l-router-")
    spool = os.path.join(work, "spool")
    shutil.copytree(template, spool)
    port = C.free_port()
    daemon = C.start_at_heap(work, config(spool, port, C.free_port()), port, heap)
    if daemon is None:
        return False, "did not start"
    try:
        time.sleep(args.settle)
        failures = sessions_pass(port, args.sessions, args.messages)
        alive = daemon.proc.poll() is None
    finally:
        daemon.stop()
        log = daemon.log()
        shutil.rmtree(work, ignore_errors=True)
    oom = [line for line in log.splitlines() if any(w in line for w in OUT_OF_MEMORY)]
    ok = alive and not failures and not oom
    return ok, "ok" if ok else (failures[:1] or oom[:1] or ["died"])[0][:100]


def bisect(name, attempt, lo, hi, step):
    if not attempt(hi):
        return "fails at all heaps up to %s" % C.kb(hi)
    hi, lo = C.bisect_heap(attempt, lo, hi, step)
    return "smallest heap that passes: %s (%s fails)" % (C.kb(hi), C.kb(lo))


def sendmail_cmd(heap, conf):
    exe = C.find_micropython()
    return [exe, "-X", "heapsize=%dK" % (heap // 1024), "-m", "meta1lite", "-c", conf,
            "sendmail", "-t"], C.micropython_env(C.bundle())


def sendmail_once(heap, conf):
    cmd, env = sendmail_cmd(heap, conf)
    start = time.time()
    proc = subprocess.run(cmd, input=MESSAGE, capture_output=True, env=env, timeout=120)
    return proc.returncode == 0, time.time() - start


def sendmail_figures(template, args, daemon_up):
    work = tempfile.mkdtemp(prefix="m1l-sendmail-")
    spool = os.path.join(work, "spool")
    shutil.copytree(template, spool)
    port = C.free_port()
    conf_text = config(spool, port, C.free_port())
    conf = os.path.join(work, "meta1lite.conf")
    with open(conf, "w") as f:
        f.write(conf_text)
    daemon = C.Daemon("micropython", work, conf_text, port, heap="2M")
    if daemon_up:
        daemon.start()
    try:
        result = bisect("sendmail", lambda h: sendmail_once(h, conf)[0], args.sendmail_lo,
                        args.sendmail_hi, args.sendmail_step)
        times = [sendmail_once(args.sendmail_hi, conf)[1] for _ in range(TIME_RUNS)]
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    return result, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description="the router's heap and sendmail figures")
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--messages", type=int, default=5, help="messages per session")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after start before the sessions")
    parser.add_argument("--lo", type=C.parse_size, default=C.parse_size("256K"))
    parser.add_argument("--hi", type=C.parse_size, default=C.parse_size("8M"))
    parser.add_argument("--deferred", action="store_true",
                        help="the queued messages were tried already (next try in 1h)")
    parser.add_argument("--drain", action="store_true",
                        help="instead of the sessions: the queued messages (all due) must drain to a next hop")
    parser.add_argument("--no-sendmail", action="store_true", help="only the daemon's figure")
    parser.add_argument("--sendmail-lo", type=C.parse_size, default=C.parse_size("64K"))
    parser.add_argument("--sendmail-hi", type=C.parse_size, default=C.parse_size("1M"))
    parser.add_argument("--step", type=C.parse_size, default=C.parse_size("64K"))
    parser.add_argument("--sendmail-step", type=C.parse_size, default=C.parse_size("16K"))
    args = parser.parse_args()
    if C.find_micropython() is None:
        sys.exit("micropython not found (install the test extra)")
    print("machine: %s" % C.machine())
    template = os.path.join(tempfile.mkdtemp(prefix="m1l-queue-"), "spool")
    fill_spool(template, args.queued, args.deferred)
    rows = []

    def attempt(heap):
        ok, why = (drain_run if args.drain else daemon_run)(template, heap, args)
        rows.append([C.kb(heap), why])
        print("  daemon %s: %s" % (C.kb(heap), why), flush=True)
        return ok
    result = bisect("daemon", attempt, args.lo, args.hi, args.step)
    if args.deferred:
        template = os.path.join(tempfile.mkdtemp(prefix="m1l-queue-"), "spool")
        fill_spool(template, args.queued)         # sendmail's figures: a plain queue
    C.table("daemon: %d queued (%s), %s" % (
        args.queued, "deferred, next try in 1h" if args.deferred else "all due at start",
        "drained to a next hop" if args.drain else "%d sessions x %d messages of 2 KB" % (
            args.sessions, args.messages)),
            ["heapsize", "result"], rows)
    print("daemon: %s" % result)
    if args.no_sendmail:
        return
    empty = os.path.join(tempfile.mkdtemp(prefix="m1l-empty-"), "spool")
    fill_spool(empty, 0)
    for label, queue, up in (("daemon down, empty queue", empty, False),
                             ("daemon down, %d queued" % args.queued, template, False),
                             ("daemon up, %d queued" % args.queued, template, True)):
        heap, seconds = sendmail_figures(queue, args, up)
        print("sendmail, one message, %s: %s; median wall time %.3f s (%d runs at %s)"
              % (label, heap, seconds, TIME_RUNS, C.kb(args.sendmail_hi)), flush=True)


if __name__ == "__main__":
    main()

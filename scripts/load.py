# Load (issue 11): the real daemon on loopback holds many idle connections, slow
# clients (a command one byte at a time), and clients that pipeline commands and
# never read, while one legitimate client keeps sending a message every interval
# to an aiosmtpd next hop; prints how the hostile connections fared (greeted,
# refused with 421, cut by the server), the legitimate client's latency (250
# and delivery at the next hop), and the daemon's memory. Bounded in count and
# time; loopback only. Prints figures, asserts nothing; tests/test_harness.py runs
# it small.
# Usage: .venv/bin/python scripts/load.py [--idle 1000] [--slow 50] [--nonreaders 50]
#        [--seconds 30] [--interval 0.5] [--max-connections N] [--runtime cpython|micropython]
import argparse
import asyncio
import os
import resource
import shutil
import smtplib
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (os.path.join(ROOT, "tests"), ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from helpers.daemon import ROUTER_HEAP, Daemon, config_text, free_port  # noqa: E402
from helpers.nexthop import NextHop  # noqa: E402

HOST = "127.0.0.1"


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Stats:
    def __init__(self):
        self.opened = self.greeted = self.refused = self.failed = 0
        self.cut = {"idle": 0, "slow": 0, "nonreader": 0}
        self.legit = []             # (ok, seconds to 250 or None, reply)


async def hostile(kind, port, stats, stop, index):
    """One hostile connection until stop: idle after EHLO, slow, or never reading."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 30)
    except (OSError, asyncio.TimeoutError):
        stats.failed += 1
        return
    stats.opened += 1
    try:
        if kind != "nonreader":
            greeting = await asyncio.wait_for(reader.readline(), 30)
            if greeting.startswith(b"421"):
                stats.refused += 1
                return
            if greeting.startswith(b"220"):
                stats.greeted += 1
        if kind == "idle":
            writer.write(b"EHLO idle%d.test\r\n" % index)
            await writer.drain()
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                except asyncio.TimeoutError:
                    continue
                if not data:
                    stats.cut[kind] += 1
                    return
        elif kind == "slow":
            line = b"EHLO slow%d.test\r\nMAIL FROM:<s@slow.test>\r\n" % index
            pos = 0
            while not stop.is_set():
                writer.write(line[pos % len(line):pos % len(line) + 1])
                pos += 1
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                    if not data:
                        stats.cut[kind] += 1
                        return
                except asyncio.TimeoutError:
                    pass
        else:   # pipelines commands and never reads: the server's replies pile up
            chunk = b"EHLO nr.test\r\n" + b"NOOP\r\n" * 500
            while not stop.is_set():
                writer.write(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 1.0)
                except asyncio.TimeoutError:
                    await asyncio.sleep(0.5)        # our send buffer is full: hold
    except (OSError, asyncio.IncompleteReadError):
        stats.cut[kind] += 1
    except asyncio.TimeoutError:
        stats.failed += 1
    finally:
        writer.transport.abort()


def legit_send(port, token, timeout):
    start = time.time()
    try:
        client = smtplib.SMTP(HOST, port, timeout=timeout)
        client.ehlo("legit.test")
        client.mail("legit@client.test")
        client.rcpt("rcpt@example.org")
        code, reply = client.data(b"Subject: %s\r\n\r\nhello\r\n" % token.encode())
        client.quit()
        return code == 250, time.time() - start, "%d %s" % (code, reply[:60].decode("ascii", "replace"))
    except (OSError, smtplib.SMTPException) as exc:
        return False, time.time() - start, repr(exc)[:80]


async def drive(port, args, stats, pid):
    stop = asyncio.Event()
    kinds = (["idle"] * args.idle + ["slow"] * args.slow + ["nonreader"] * args.nonreaders)
    tasks = []
    for i, kind in enumerate(kinds):        # open at a bounded pace: 200 per 0.1 s
        tasks.append(asyncio.ensure_future(hostile(kind, port, stats, stop, i)))
        if i % 200 == 199:
            await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    held = stats.opened
    peak_rss = rss_kb(pid)
    deadline = time.time() + args.seconds
    n = 0
    sent_at = {}
    while time.time() < deadline:
        n += 1
        token = "legit-%d" % n
        sent_at[token] = time.time()
        ok, seconds, reply = await asyncio.get_event_loop().run_in_executor(
            None, legit_send, port, token, args.timeout)
        stats.legit.append((ok, seconds, reply, token))
        peak_rss = max(peak_rss, rss_kb(pid))
        await asyncio.sleep(max(0.0, args.interval - seconds))
    alive = sum(1 for t in tasks if not t.done())
    stop.set()
    await asyncio.wait(tasks, timeout=10)
    for t in tasks:
        t.cancel()
    return held, alive, peak_rss, sent_at


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def run(args):
    total = args.idle + args.slow + args.nonreaders
    nofile = raise_nofile(2 * total + 200)
    workdir = tempfile.mkdtemp(prefix="m1l-load-")
    port = free_port()
    maxconn = args.max_connections or total + 50
    stats = Stats()
    with NextHop(HOST) as hop:
        conf = config_text(
            os.path.join(workdir, "spool"), port,
            smtps_extra="max_connections = %d; max_connections_per_client = %d;"
                        " max_messages_per_client_per_minute = 1000000;" % (maxconn, maxconn),
            top_extra='smtpc { tls = off; }\nsmar { route "*" { via = "[%s]:%d"; tls = off; } }'
                      % (HOST, hop.port))
        daemon = Daemon(args.runtime, workdir, conf, port, heap=args.heap)
        daemon.start()
        try:
            rss0 = rss_kb(daemon.proc.pid)
            started = time.time()
            held, alive, peak_rss, sent_at = asyncio.run(drive(port, args, stats, daemon.proc.pid))
            end = time.time() + 10
            while time.time() < end and len(hop.messages) < sum(1 for r in stats.legit if r[0]):
                time.sleep(0.1)
            arrived = {}
            with hop.lock:
                for m in hop.messages:
                    for token in sent_at:
                        if (b"Subject: %s\r\n" % token.encode()) in m.content:
                            arrived.setdefault(token, time.time())
            exited = daemon.proc.poll()
            running_log = daemon.log()      # what the stop prints is not the load's doing
        finally:
            daemon.stop()
        log = daemon.log()
    ok = [r for r in stats.legit if r[0]]
    if log.count("Traceback") or len(ok) < len(stats.legit):
        print("daemon log kept: %s" % daemon.log_path)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    lat = [r[1] for r in ok]
    return {
        "runtime": args.runtime, "nofile": nofile, "max_connections": maxconn,
        "hostile": total, "opened": stats.opened, "held_after_1s": held, "greeted": stats.greeted,
        "refused_421": stats.refused, "connect_failed": stats.failed, "cut_idle": stats.cut["idle"], "cut_slow": stats.cut["slow"],
        "cut_nonreader": stats.cut["nonreader"],
        "alive_at_end": alive, "legit_sent": len(stats.legit), "legit_ok": len(ok),
        "legit_delivered": len(arrived),
        "legit_p50_s": percentile(lat, 0.5), "legit_p95_s": percentile(lat, 0.95),
        "legit_max_s": max(lat) if lat else float("nan"),
        "legit_failures": [r[2] for r in stats.legit if not r[0]][:5],
        "rss_start_kb": rss0, "rss_peak_kb": peak_rss, "daemon_exited": exited,
        "tracebacks": running_log.count("Traceback"),
        "tracebacks_at_stop": log.count("Traceback") - running_log.count("Traceback"),
        "seconds": round(time.time() - started, 1),
    }


def parser():
    ap = argparse.ArgumentParser(description="meta1lite under hostile connections, loopback only")
    ap.add_argument("--idle", type=int, default=1000, help="connections held open after EHLO")
    ap.add_argument("--slow", type=int, default=50, help="clients sending one byte a second")
    ap.add_argument("--nonreaders", type=int, default=50, help="clients that never read")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=0.5, help="between legitimate messages")
    ap.add_argument("--timeout", type=float, default=30.0, help="legitimate client's SMTP timeout")
    ap.add_argument("--max-connections", type=int, default=0,
                    help="smtps.max_connections (default: every hostile one + 50)")
    ap.add_argument("--runtime", choices=("cpython", "micropython"), default="cpython")
    ap.add_argument("--heap", default=ROUTER_HEAP)
    return ap


def main():
    f = run(parser().parse_args())
    print("load (%s): %d hostile connections (RLIMIT_NOFILE %d, max_connections %d), %.1f s"
          % (f["runtime"], f["hostile"], f["nofile"], f["max_connections"], f["seconds"]))
    for key in ("opened", "held_after_1s", "greeted", "refused_421", "connect_failed",
                "cut_idle", "cut_slow", "cut_nonreader", "alive_at_end", "legit_sent", "legit_ok", "legit_delivered"):
        print("  %-18s %d" % (key, f[key]))
    print("  legit latency to 250: p50 %.3f s, p95 %.3f s, max %.3f s"
          % (f["legit_p50_s"], f["legit_p95_s"], f["legit_max_s"]))
    print("  daemon RSS: %d KB at start, %d KB peak; exited: %s; tracebacks in log: %d "
          "(%d more at the stop)" % (f["rss_start_kb"], f["rss_peak_kb"], f["daemon_exited"],
                                     f["tracebacks"], f["tracebacks_at_stop"]))
    for failure in f["legit_failures"]:
        print("  legit failure: %s" % failure)


if __name__ == "__main__":
    main()

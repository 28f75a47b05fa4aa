#!/usr/bin/env python3
"""End-to-end relay throughput and latency, meta1lite and Postfix side by side in one run.

    .venv/bin/python benchmarks/relay.py [-m 2000] [-s 20] [-l 2048] [--warmup 100]
                     [--big-msgs 500] [--big-size 102400] [--lat-msgs 200]
                     [--smtpc "max_connections = 10; max_per_destination = 4;"]
                     [--upy-heap 2M] [--upy-msgs 500] [--upy-lat-msgs 50] [--no-upy] [--no-postfix]
                     [--daemons N] [--profile FILE]

Client: Postfix's smtp-source (else the built-in asyncio client, benchmarks/_loadtools.py),
M messages of L bytes, S concurrent sessions, one session per message.
Next hop: Postfix's smtp-sink on loopback (else an aiosmtpd sink), shared by all runs;
its message counter says when the last message arrived.
Runs, one after the other, each after a warm-up batch of --warmup messages:
  sink       smtp-source straight into the sink (the harness ceiling)
  postfix    a throwaway Postfix instance (own config_directory and queue_directory under
             /var/tmp, smtpd on a loopback port, relayhost = [127.0.0.1]:SINKPORT); needs root
  meta1lite  `meta1lite run` on CPython, route "*" { via = "[127.0.0.1]:SINKPORT"; }
  meta1lite  the same under the MicroPython unix port from the .mpy bundle (--upy-heap)
  meta1lite  with --daemons N: N independent CPython relays (own spools and ports), the
             2 KB load split between them: the ceiling of any design that spreads the
             relay over more processes (cores) on this machine
Each of postfix and meta1lite (cpython) runs three loads: M x L bytes over S sessions,
--big-msgs x --big-size bytes over S sessions, and --lat-msgs messages one at a time
(1 recipient x 1 session, to latency.test, routed by both relays to a stamping sink of
benchmarks/_latency.py): latency = the client's final dot to the next hop's 250, median
and p99. The MicroPython run is M' = --upy-msgs x L over --upy-sessions, then --upy-lat-msgs
one at a time (its latency).
Figures: accept msg/s (M / client time) and end-to-end msg/s (M / time until the sink
counted M), and meta1lite / Postfix ratios of the same run; the relay's CPU per message
(its processes, /proc/PID/stat) and the machine's (every process and the kernel,
/proc/stat: client, sink and relay share the cores). Figures only, no assertions.
--profile FILE: the CPython daemon runs under cProfile (stats dumped to FILE at its
stop, the largest costs printed: self time and cumulative); its rates are then not
comparable with the other runs.
The sim board's rate is benchmarks/board.py's (it builds the shared firmware; not run here).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import _latency  # noqa: E402

MASTER_CF = """127.0.0.1:%(port)d inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """compatibility_level = 3.6
queue_directory = %(base)s/queue
data_directory = %(base)s/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = pfbench.test
mydomain = pfbench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:%(sink)d
transport_maps = inline:{ latency.test=relay:[127.0.0.1]:%(lat)d }
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = %(base)s/maillog
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtp_dns_support_level = disabled
"""


class PostfixInstance:
    """A private Postfix: its own config_directory, queue and log, loopback only."""

    def __init__(self, sink_port, lat_port):
        self.port = C.free_port()
        self.base = tempfile.mkdtemp(prefix="m1l-pf-", dir="/var/tmp")
        os.chmod(self.base, 0o755)
        self.etc = os.path.join(self.base, "etc")
        for d in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.base, d))
        shutil.chown(os.path.join(self.base, "data"), "postfix")
        vals = {"base": self.base, "sink": sink_port, "port": self.port, "lat": lat_port}
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(MAIN_CF % vals)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF % vals)

    def start(self):
        out = subprocess.run([C.tool("postfix"), "-c", self.etc, "start"], capture_output=True, text=True,
                             timeout=60)
        if out.returncode:
            raise RuntimeError("postfix start failed: %s %s" % (out.stderr[-500:], self.log()[-500:]))
        C.wait_port(self.port, 20)
        return self

    def log(self):
        try:
            with open(os.path.join(self.base, "maillog")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, keep=False):
        subprocess.run([C.tool("postfix"), "-c", self.etc, "stop"], capture_output=True, timeout=60)
        time.sleep(0.5)
        if not keep:
            shutil.rmtree(self.base, ignore_errors=True)


def cpu_seconds(pid):
    """(user, system) CPU seconds of a process so far (Linux /proc), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = float(os.sysconf("SC_CLK_TCK"))
        return int(fields[11]) / tick, int(fields[12]) / tick
    except (OSError, ValueError, IndexError):
        return None


def machine_cpu_seconds():
    """CPU seconds the whole machine has spent busy so far (/proc/stat: user, nice,
    system, irq, softirq; every process and the kernel), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:8]]
        return (sum(fields[:3]) + sum(fields[5:7])) / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        return None


def push(ports, msgs, sessions, size, args):
    """smtp-source into each port at once, msgs and sessions split evenly between
    them; (seconds until every client ended, client name, details of the first)."""
    if len(ports) == 1:
        return C.run_source(ports[0], msgs, sessions, size, use_postfix=not args.builtin_client,
                            timeout=args.timeout)
    n = len(ports)
    out = [(0, "", {"rc": "no result"})] * n

    def one(i):
        share = msgs // n + (1 if i < msgs % n else 0)
        out[i] = C.run_source(ports[i], share, max(1, sessions // n), size,
                              use_postfix=not args.builtin_client, timeout=args.timeout)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [o for o in out if o[2].get("rc")]
    return time.perf_counter() - t0, out[0][1], (failed or out)[0][2]


def measure(name, port, sink, args, msgs=None, sessions=None, size=None, pid=None):
    """Warm up, then push msgs; returns a row of figures (with pid: the process's CPU
    time per message, a figure that other jobs on the machine disturb less). port and
    pid may be lists (independent relays side by side, the load split between them)."""
    ports = port if isinstance(port, list) else [port]
    pids = pid if isinstance(pid, list) else [pid] if pid else []
    msgs = msgs or args.msgs
    sessions = sessions or args.sessions
    size = size or args.size
    if args.warmup:
        base = sink.count
        _dt, _c, wdet = push(ports, args.warmup * len(ports), sessions, size, args)
        if not wdet.get("rc"):
            sink.wait_count(base + args.warmup * len(ports), args.timeout)
        time.sleep(0.3)
    base = sink.count
    cpu0 = [cpu_seconds(p) for p in pids]
    busy0 = machine_cpu_seconds()
    t0 = time.perf_counter()
    dt, client, det = push(ports, msgs, sessions, size, args)
    t_end = sink.wait_count(base + msgs, args.timeout)
    busy1 = machine_cpu_seconds()
    got = sink.count - base
    e2e = (t_end - t0) if t_end else None
    note = "delivered %d/%d" % (got, msgs) + ("" if t_end else " (stalled or timed out)")
    cpu1 = [cpu_seconds(p) for p in pids]
    if pids and None not in cpu0 + cpu1:
        user = sum(c[0] for c in cpu1) - sum(c[0] for c in cpu0)
        system = sum(c[1] for c in cpu1) - sum(c[1] for c in cpu0)
        note += ", cpu %.2f ms/msg (system %.2f)" % (1000 * (user + system) / msgs, 1000 * system / msgs)
    if busy0 is not None and busy1 is not None:
        note += ", machine %.2f ms/msg" % (1000 * (busy1 - busy0) / msgs)
    if det.get("rc"):
        note += ", client rc %s" % det["rc"]
    if det.get("stderr"):
        note += ", client: %s" % det["stderr"].splitlines()[-1][:70]
    if "ok" in det:
        note += ", acked %d" % det["ok"]
    return {"name": name, "msgs": msgs, "sessions": sessions, "size": size, "accept_s": dt, "e2e_s": e2e,
            "accept": msgs / dt, "e2e": (msgs / e2e) if e2e else None, "note": note}


LAT_RCPT = "c@latency.test"


def relay_conf(work, port, sink_port, lat_port, smtpc):
    routes = 'route "latency.test" { via = "[127.0.0.1]:%d"; } route "*" { via = "[127.0.0.1]:%d"; }' \
        % (lat_port, sink_port)
    return C.bench_config(os.path.join(work, "spool"), port, smar=routes,
                          smtpc=smtpc, top='control = "127.0.0.1:%d";' % C.free_port())


def run_loads(name, port, sink, lat, args, pid=None):
    """The three loads against one relay listening on port: rows, latencies."""
    rows = [measure(name, port, sink, args, pid=pid)]
    if args.big_msgs:
        rows.append(measure(name, port, sink, args, msgs=args.big_msgs, size=args.big_size, pid=pid))
    lats = None
    if lat is not None and args.lat_msgs:
        lats = _latency.measure(port, lat, args.lat_msgs, args.size, C.SENDER, LAT_RCPT)
    return rows, lats


def run_meta1lite(runtime, sink, lat, args, heap="1M", msgs=None, sessions=None, daemons=1):
    """One relay (or `daemons` independent ones, each with its own spool and port,
    the load split between them) under runtime: rows, latencies."""
    started = []
    try:
        for _ in range(daemons):
            work = tempfile.mkdtemp(prefix="m1l-relay-")
            port = C.free_port()
            conf = relay_conf(work, port, sink.port, lat.port, args.smtpc)
            if args.profile and runtime == "cpython" and daemons == 1:
                d = C.Daemon(runtime, work, conf, port, heap=heap, entry=C.ENTRY,
                             env={"META1LITE_BENCH_PROFILE": args.profile})
            else:
                d = C.Daemon(runtime, work, conf, port, heap=heap)
            d.start()
            started.append((d, port, work))
        name = "meta1lite (%s%s%s)" % (runtime, ", heap " + heap if runtime == "micropython" else "",
                                       ", %d daemons" % daemons if daemons > 1 else "")
        ports, pids = [p for _, p, _ in started], [d.proc.pid for d, _, _ in started]
        if runtime == "micropython":
            rows = [measure(name, ports, sink, args, msgs, sessions, pid=pids)]
            lats = _latency.measure(ports[0], lat, args.upy_lat_msgs, args.size, C.SENDER, LAT_RCPT) \
                if args.upy_lat_msgs else None
        elif daemons > 1:
            rows, lats = [measure(name, ports, sink, args, pid=pids)], None
        else:
            rows, lats = run_loads(name, ports[0], sink, lat, args, pid=pids[0])
    finally:
        for d, _, _ in started:
            d.stop()
    sent = 0
    for d, _, work in started:
        log = d.log()
        sent += log.count("status=sent")
        if "Traceback" in log or "MemoryError" in log:
            rows[-1]["note"] += ", DAEMON ERROR (see %s/daemon.log)" % work
    rows[-1]["note"] += ", sent lines %d" % sent
    if args.profile and runtime == "cpython" and daemons == 1:
        print_profile(args.profile)
    return rows, lats


def print_profile(path, top=12):
    """The profiled daemon's largest costs: by self time, then cumulative."""
    import pstats
    for key in ("tottime", "cumulative"):
        print("== cProfile of the CPython daemon (%s), %s ==" % (key, path))
        pstats.Stats(path, stream=sys.stdout).sort_stats(key).print_stats(top)


def fmt(x, f="%.0f"):
    return "-" if x is None else f % x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--msgs", type=int, default=2000)
    ap.add_argument("-s", "--sessions", type=int, default=20)
    ap.add_argument("-l", "--size", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--big-msgs", type=int, default=500, help="messages of the large-message load (0: none)")
    ap.add_argument("--big-size", type=int, default=102400)
    ap.add_argument("--lat-msgs", type=int, default=200, help="messages of the latency load (0: none)")
    ap.add_argument("--smtpc", default="", help="extra smtpc options for meta1lite (default: its defaults)")
    ap.add_argument("--upy-heap", default="2M")
    ap.add_argument("--upy-msgs", type=int, default=500)
    ap.add_argument("--upy-sessions", type=int, default=4)
    ap.add_argument("--upy-lat-msgs", type=int, default=50, help="latency messages under MicroPython (0: none)")
    ap.add_argument("--daemons", type=int, default=1,
                    help="also run N independent CPython relays side by side, the 2 KB load split "
                         "between them (what a second core could buy; 1: not run)")
    ap.add_argument("--profile", metavar="FILE", help="cProfile the CPython daemon into FILE")
    ap.add_argument("--no-upy", action="store_true")
    ap.add_argument("--no-postfix", action="store_true", help="skip the Postfix instance")
    ap.add_argument("--builtin-client", action="store_true")
    ap.add_argument("--builtin-sink", action="store_true")
    ap.add_argument("--timeout", type=float, default=300, help="bound of each client run and drain (s)")
    args = ap.parse_args()

    have_pf = C.tool("smtp-source") and C.tool("postfix") and os.path.isdir("/usr/lib/postfix/sbin")
    print("relay.py: %s" % C.machine())
    sink = C.Sink(use_postfix=not args.builtin_sink)
    lat = _latency.StampSink(C.free_port())
    client = "smtp-source" if (C.tool("smtp-source") and not args.builtin_client) else "asyncio client"
    print("parameters: msgs=%d sessions=%d size=%d warmup=%d big=%dx%d latency msgs=%d client=%s "
          "next hop=%s 127.0.0.1:%d; meta1lite smtpc extra: %r"
          % (args.msgs, args.sessions, args.size, args.warmup, args.big_msgs, args.big_size, args.lat_msgs,
             client, sink.name, sink.port, args.smtpc or "(defaults)"))
    rows, lat_rows = [], []
    pf_rows = {}
    try:
        rows.append(measure("%s -> %s (no relay)" % (client, sink.name), sink.port, sink, args))
        if not have_pf or args.no_postfix:
            print("postfix: not installed" if not have_pf else "postfix: skipped")
        elif os.geteuid() != 0:
            print("postfix: needs root for a private instance; skipped")
        else:
            inst = PostfixInstance(sink.port, lat.port)
            try:
                inst.start()
                got, lats = run_loads("postfix %s" % C.postfix_version(), inst.port, sink, lat, args)
                rows += got
                pf_rows = dict((r["size"], r) for r in got)
                lat_rows.append(("postfix", lats))
            except Exception as exc:  # noqa: BLE001
                print("postfix: failed: %s" % exc)
            finally:
                inst.stop()
        got, lats = run_meta1lite("cpython", sink, lat, args)
        rows += got
        lat_rows.append(("meta1lite (cpython)", lats))
        if args.daemons > 1:
            rows += run_meta1lite("cpython", sink, lat, args, daemons=args.daemons)[0]
        if not args.no_upy and C.find_micropython():
            got, lats = run_meta1lite("micropython", sink, lat, args, heap=args.upy_heap, msgs=args.upy_msgs,
                                      sessions=args.upy_sessions)
            rows += got
            if lats is not None:
                lat_rows.append(("meta1lite (micropython, heap %s)" % args.upy_heap, lats))
    finally:
        sink.stop()
        lat.stop()
    print_tables(rows, pf_rows, lat_rows, args)


def print_tables(rows, pf_rows, lat_rows, args):
    out = []
    for r in rows:
        ratio = "-"
        pf = pf_rows.get(r["size"])
        if pf and r is not pf and r.get("e2e") and pf.get("e2e") and "no relay" not in r["name"]:
            ratio = "%.2fx" % (r["e2e"] / pf["e2e"])
        out.append([r["name"], r["size"], r["msgs"], r["sessions"], "%.2f" % r["accept_s"], fmt(r["accept"]),
                    fmt(r["e2e_s"], "%.2f"), fmt(r["e2e"]), ratio, r["note"]])
    C.table("end-to-end relay throughput (e2e = msgs / time until the sink counted them all)",
            ["run", "size", "msgs", "sessions", "accept s", "accept msg/s", "e2e s", "e2e msg/s", "vs postfix",
             "check"], out)
    if lat_rows:
        out = []
        for name, lats in lat_rows:
            med, p99 = _latency.summary(lats)
            sent = args.upy_lat_msgs if "micropython" in name else args.lat_msgs
            out.append([name, "%d/%d" % (len(lats or []), sent), fmt(med, "%.2f"), fmt(p99, "%.2f")])
        C.table("latency, 1 recipient x 1 session, %d bytes (client's final dot -> next hop's 250)" % args.size,
                ["run", "arrived", "median ms", "p99 ms"], out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Accept throughput of smtps + spool with the fsync guarantee ("250 means durable").

    .venv/bin/python benchmarks/accept.py [-m 2000] [-s 20] [-l 2048]
                     [--upy-heap 1M] [--upy-msgs 300] [--upy-sessions 20,4] [--upy-backlog 64]
                     [--fsync-msgs 300] [--profile 0] [--builtin-client] [--strace]

What it runs (one after the other, each against a fresh spool, every server on loopback):
  1. `meta1lite run` on CPython with the queue manager switched off (benchmarks/_entry.py),
     M messages of L bytes over S concurrent sessions (one session per message, as
     smtp-source does); client = Postfix's smtp-source when installed, else the built-in
     asyncio client (benchmarks/_loadtools.py). msg/s = M / wall time of the client.
     Afterwards the queue is counted with `meta1lite queue list --json` (acknowledged
     must equal queued).
  2. fsyncs per message: the same daemon under tests/helpers/shim_daemon.py (which counts every
     durable.fsync_file / durable.sync_dir) with S sessions and with 1 session; with
     --strace (or when the shim is missing) also the fsync/fdatasync syscalls via strace -f -c.
  3. The daemon under the MicroPython unix port from the .mpy bundle (-X heapsize=HEAP),
     --upy-msgs messages at each of --upy-sessions concurrencies; above 5 sessions also
     with listen() backlog --upy-backlog (MicroPython's start_server defaults to 5, and
     the kernel drops SYNs beyond it: clients retry after 1 s, 3 s, ...).
  4. --profile SECONDS: cProfile of the CPython daemon under the same load; top functions.
Figures only, no assertions; numbers drift run to run.
"""
import argparse
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def queued_count(workdir, conf_path):
    out = subprocess.run([sys.executable, "-m", "meta1lite", "-c", conf_path, "queue", "list", "--json"],
                         capture_output=True, text=True, cwd=workdir, timeout=300)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("{"))


def one_run(runtime, msgs, sessions, size, args, heap="320K", trace=False, profile=None,
            strace=False, backlog=None):
    """Start a fresh daemon, push the load, stop; returns a dict of figures."""
    work = tempfile.mkdtemp(prefix="m1l-accept-")
    port = C.free_port()
    conf = C.bench_config(os.path.join(work, "spool"), port)
    trace_path = os.path.join(work, "trace.txt") if trace else None
    prof_path = os.path.join(work, "daemon.prof") if profile else None
    d = C.Daemon if not strace else StraceDaemon
    env = {}
    if trace_path:
        env["META1LITE_SHIM_TRACE"] = trace_path
    if prof_path:
        env["META1LITE_BENCH_PROFILE"] = prof_path
    env["META1LITE_BENCH_NO_QMGR"] = "1"
    if backlog:
        env["META1LITE_BENCH_BACKLOG"] = str(backlog)
    daemon = d(runtime, work, conf, port, heap=heap, env=env, entry=C.ENTRY)
    if strace:
        daemon.strace_out = os.path.join(work, "strace.txt")
    daemon.start()
    res = {"work": work}
    try:
        dt, client, det = C.run_source(port, msgs, sessions, size, use_postfix=not args.builtin_client,
                                       timeout=args.timeout)
        res.update(seconds=dt, client=client, rate=msgs / dt, details=det)
    finally:
        daemon.stop()
    res["alive"] = "Traceback" not in daemon.log() and "MemoryError" not in daemon.log()
    res["log_tail"] = daemon.log()[-1500:]
    res["queued"] = queued_count(work, daemon.conf_path)
    if trace_path and os.path.exists(trace_path):
        syncs, acks, fs, ds = C.count_trace(trace_path)
        res.update(syncs=syncs, acks=acks, fsyncs=fs, dsyncs=ds)
    if strace:
        res["strace_syncs"] = parse_strace(daemon.strace_out)
    if prof_path:
        res["profile"] = prof_path
    return res


class StraceDaemon(C.Daemon):
    """The daemon under `strace -f -c -e trace=fsync,fdatasync` (summary at exit)."""

    def command(self):
        cmd, env = C.Daemon.command(self)
        return ["strace", "-f", "-qq", "--seccomp-bpf", "-c", "-o", self.strace_out,
                "-e", "trace=fsync,fdatasync,sync_file_range"] + cmd, env

    def stop(self):
        # stop the traced daemon itself (strace writes its summary when the tracee ends)
        try:
            with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = []
        for pid in kids:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        C.Daemon.stop(self)


def parse_strace(path):
    total = 0
    try:
        with open(path) as f:
            for line in f:
                m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync|sync_file_range)\s*$",
                             line)
                if m:
                    total += int(m.group(1))
    except OSError:
        return None
    return total


def fmt_rate(r):
    if "rate" not in r:
        return "-"
    return "%.0f" % r["rate"]


def check(r, msgs):
    det = r.get("details", {})
    ok = det.get("ok")
    note = "queued %d/%d" % (r["queued"], msgs)
    if ok is not None:
        note += ", client ok %d" % ok
    if det.get("rc"):
        note += ", client rc %s" % det["rc"]
    if det.get("stderr"):
        note += ", client errors: %s" % det["stderr"].splitlines()[-1][:80]
    if not r["alive"]:
        note += ", DAEMON ERROR (see %s/daemon.log)" % r["work"]
    return note


def print_profile(path, top):
    st = pstats.Stats(path)
    st.sort_stats("tottime")
    print("\n== cProfile of the CPython daemon under load: top %d by own time ==" % top)
    width = 0
    rows = []
    for (fn, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
        rows.append((tt, ct, nc, "%s:%d(%s)" % (fn.replace(C.ROOT + "/", ""), line, name)))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows) or 1
    print("  tottime  share  cumtime     calls  function")
    for tt, ct, nc, where in rows[:top]:
        width = max(width, len(where))
        print("  %7.3f  %4.1f%%  %7.3f  %8d  %s" % (tt, 100 * tt / total, ct, nc, where))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--msgs", type=int, default=2000)
    ap.add_argument("-s", "--sessions", type=int, default=20)
    ap.add_argument("-l", "--size", type=int, default=2048)
    ap.add_argument("--fsync-msgs", type=int, default=300, help="messages per fsync-counting run")
    ap.add_argument("--upy-heap", default="1M", help="MicroPython -X heapsize (1M: a router)")
    ap.add_argument("--upy-msgs", type=int, default=300)
    ap.add_argument("--upy-sessions", default="20,4")
    ap.add_argument("--profile", type=float, default=0, help="also profile the CPython daemon (msgs = 2x -m)")
    ap.add_argument("--profile-top", type=int, default=10)
    ap.add_argument("--builtin-client", action="store_true", help="never use smtp-source")
    ap.add_argument("--strace", action="store_true", help="also count fsync syscalls with strace")
    ap.add_argument("--no-upy", action="store_true")
    ap.add_argument("--upy-backlog", type=int, default=64,
                    help="experiment: also run MicroPython with this listen() backlog (its default is 5); 0: no")
    ap.add_argument("--timeout", type=float, default=600, help="bound of each client run (s)")
    args = ap.parse_args()

    client = "smtp-source" if (C.tool("smtp-source") and not args.builtin_client) else "asyncio client"
    print("accept.py: %s" % C.machine())
    print("parameters: msgs=%d sessions=%d size=%d client=%s; daemon: meta1lite run, qmgr off "
          "(smtps + spool only), fsync guarantee on" % (args.msgs, args.sessions, args.size, client))
    if client == "smtp-source":
        print("client command: smtp-source -l %d -m %d -s %d -f %s -t %s 127.0.0.1:PORT"
              % (args.size, args.msgs, args.sessions, C.SENDER, C.RCPT))

    rows = []
    r = one_run("cpython", args.msgs, args.sessions, args.size, args)
    rows.append(["cpython", "-", args.sessions, args.msgs, "%.2f" % r["seconds"], fmt_rate(r), check(r, args.msgs)])

    upy = C.find_micropython()
    upy_rows = []
    if upy and not args.no_upy:
        C.bundle()
        for s in [int(x) for x in args.upy_sessions.split(",") if x]:
            r = one_run("micropython", args.upy_msgs, s, args.size, args, heap=args.upy_heap)
            upy_rows.append(["micropython", args.upy_heap, s, args.upy_msgs, "%.2f" % r["seconds"],
                             fmt_rate(r), check(r, args.upy_msgs)])
            if args.upy_backlog and s > 5:
                r = one_run("micropython", args.upy_msgs, s, args.size, args, heap=args.upy_heap,
                            backlog=args.upy_backlog)
                upy_rows.append(["micropython backlog=%d" % args.upy_backlog, args.upy_heap, s, args.upy_msgs,
                                 "%.2f" % r["seconds"], fmt_rate(r), check(r, args.upy_msgs)])
    C.table("accept throughput (msg/s = messages / client wall time)",
            ["runtime", "heap", "sessions", "msgs", "seconds", "msg/s", "check"], rows + upy_rows)
    if not upy:
        print("micropython: not installed")

    shim = os.path.exists(os.path.join(C.TESTS, "helpers", "shim_daemon.py"))
    use_strace = (args.strace or not shim) and C.strace_available()
    frows = []
    for runtime in ("cpython", "micropython"):
        if runtime == "micropython" and (not upy or args.no_upy):
            continue
        for s in sorted({args.sessions, 1}, reverse=True):
            n = args.fsync_msgs if runtime == "cpython" else min(args.fsync_msgs, args.upy_msgs)
            heap = args.upy_heap if runtime == "micropython" else "-"
            if shim:
                r = one_run(runtime, n, s, args.size, args, heap=args.upy_heap, trace=True)
                acks = r.get("acks") or 0
                per = "%.3f" % (r["syncs"] / acks) if acks else "-"
                frows.append([runtime, heap, s, n, "shim", r.get("syncs"), r.get("fsyncs"), r.get("dsyncs"),
                              acks, per, fmt_rate(r)])
            if use_strace and runtime == "cpython":
                r = one_run(runtime, n, s, args.size, args, strace=True)
                calls = r.get("strace_syncs")
                per = "%.3f" % (calls / r["queued"]) if calls is not None and r["queued"] else "-"
                frows.append([runtime, heap, s, n, "strace", calls, "-", "-", r["queued"], per, fmt_rate(r)])
    if frows:
        C.table("fsyncs per message (shim: durable.fsync_file + durable.sync_dir calls; strace: "
                "fsync/fdatasync syscalls; acks = 250s sent / messages queued)",
                ["runtime", "heap", "sessions", "msgs", "counter", "syncs", "file", "dir", "acks",
                 "syncs/msg", "msg/s (slowed)"], frows)
    else:
        print("fsyncs per message: skipped (neither tests/helpers/shim_daemon.py nor strace)")

    if args.profile:
        n = max(args.msgs, int(args.profile * 600))
        r = one_run("cpython", n, args.sessions, args.size, args, profile=True)
        print("\nprofile run: %d msgs, %d sessions, %.2f s, %.0f msg/s under cProfile (%s)"
              % (n, args.sessions, r["seconds"], r["rate"], check(r, n)))
        if os.path.exists(r.get("profile", "")):
            print_profile(r["profile"], args.profile_top)
        else:
            print("profile: no stats written (daemon did not stop cleanly?)")


if __name__ == "__main__":
    main()

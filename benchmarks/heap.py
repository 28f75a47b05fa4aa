#!/usr/bin/env python3
"""MicroPython heap figures of the relay, from the .mpy bundle (the unix port keeps
bytecode in the GC heap, so code counts here; frozen firmware would keep it in flash).

    .venv/bin/python benchmarks/heap.py [--heap 1M] [--big 5M] [--sessions 20]
                     [--interval-ms 5] [--bisect-lo 64K] [--bisect-hi 2M] [--bisect-step 8K]
                     [--no-bisect] [--micropython sim|PATH]

  1. import cost: every module of the bundle imported in dependency order in one
     process (delta = gc.mem_alloc() after gc.collect(), and the running total), and
     each module alone in a fresh process (itself + what it imports).
  2. the daemon in-process (meta1lite.mcp.Daemon under benchmarks/_upy_heap_driver.py,
     -X heapsize=--heap): heap at start, then peak heap while a CPython client runs
     (a) one SMTP session with one 2 KB message, (b) --sessions concurrent sessions,
     (c) one message of --big bytes. A background task samples every --interval-ms:
     "live" = gc.mem_alloc() right after gc.collect(); "alloc" = without collecting.
  3. the smallest -X heapsize at which `micropython -m meta1lite run` (the real daemon,
     all modules, from the bundle) still accepts one --big message (bisection).
The PyPI unix port is 64-bit: its GC blocks are 32 bytes. --micropython sim runs the same
figures on the sim board's 32-bit unix port (16-byte blocks, as on a 32-bit MIPS or ARM
router; built and cached by firmware/build_firmware.py; the bundle comes first on its
path, ahead of its frozen copy of meta1lite); --micropython PATH on any other binary.
Both need --no-bisect (the bisection starts the daemon on the PyPI unix port).
Figures only, no assertions.
"""
import argparse
import os
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

DRIVER = os.path.join(C.HERE, "_upy_heap_driver.py")
MODULES = ["compat", "streams", "durable", "heap", "cbor", "netaddr", "conf", "conf.schema", "proto.replies", "proto.address",
           "proto.smtp_server", "headers", "spool.format", "spool.message", "spool.segment", "spool.journal",
           "spool.index", "spool.recovery",
           "spool", "smtps.authdb", "smtps.policy", "smtps.server", "proto.dns", "smar.dnsresolve",
           "smar.aliases", "smar.resolver", "proto.smtp_client", "smtpc", "qmgr.bounce",
           "qmgr.bucketmap", "qmgr.manager", "qmgr.control", "mcp"]


def bundle_modules():
    root = os.path.join(C.bundle(), "meta1lite")
    found = []
    for folder, _d, files in os.walk(root):
        for name in files:
            if not name.endswith(".mpy") or name == "__main__.mpy" or folder == root and name == "__init__.mpy":
                continue
            rel = os.path.relpath(os.path.join(folder, name), root)[:-4].replace(os.sep, ".")
            found.append(rel[:-len(".__init__")] if rel.endswith(".__init__") else rel)
    order = [m for m in MODULES if m in found] + sorted(m for m in found if m not in MODULES)
    return ["meta1lite." + m for m in order], root


EXE = []                        # --micropython: the binary the figures are taken on


def micropython():
    return EXE[0] if EXE else C.find_micropython()


def upy(args, heap, timeout=120):
    exe = micropython()
    return subprocess.run([exe, "-X", "heapsize=" + heap] + args, env=C.micropython_env(C.bundle()),
                          capture_output=True, text=True, timeout=timeout, cwd=C.ROOT)


def import_costs(heap):
    mods, root = bundle_modules()
    out = upy([DRIVER, "import"] + mods, heap)
    inorder = {}
    for line in out.stdout.splitlines():
        p = line.split()
        if p[:1] == ["IMPORT"]:
            inorder[p[1]] = (int(p[2]), int(p[3]))
    rows = []
    for m in mods:
        alone = upy([DRIVER, "import", m], heap)
        a = [ln.split() for ln in alone.stdout.splitlines() if ln.startswith("IMPORT")]
        mpy = os.path.join(root, m.split(".", 1)[1].replace(".", os.sep) + ".mpy")
        if not os.path.exists(mpy):             # a package: its __init__
            mpy = os.path.join(mpy[:-4], "__init__.mpy")
        d = inorder.get(m)
        rows.append([m, os.path.getsize(mpy), d[0] if d else "ERR", d[1] if d else "-",
                     a[0][2] if a else (alone.stderr.strip().splitlines() or ["ERR"])[-1][:40]])
    if out.returncode:
        print("import run failed: %s" % out.stderr.strip()[-300:])
    total = max([d[1] for d in inorder.values()] or [0])
    print("whole relay imported from the bundle: %d bytes of heap (%d modules)" % (total, len(mods)))
    C.table("import cost from the .mpy bundle (bytes of heap; -X heapsize=%s)" % heap,
            ["module", ".mpy bytes", "delta in order", "cumulative", "alone (with deps)"], rows)


def make_big(size):
    head = (b"From: <a@relay.test>\r\nTo: <b@example.org>\r\nSubject: big\r\n"
            b"Date: Tue, 24 Nov 2026 14:08:00 +0000\r\nMessage-ID: <big@relay.test>\r\n\r\n")
    line = b"0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789.\r\n"
    n = size - len(head)
    return head + (line * (n // len(line) + 1))[:n - 2] + b"\r\n"


def send(port, data, timeout=300):
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as s:
        s.sendmail("a@relay.test", ["b@example.org"], data)


def relay_conf(work, port, down_port):
    # deliveries go to a closed loopback port (deferred, retried after an hour): no DNS,
    # no traffic leaves the machine; the queue manager still runs.
    return C.bench_config(os.path.join(work, "spool"), port,
                          smar='route "*" { via = "[127.0.0.1]:%d"; }' % down_port,
                          qmgr="retry_min = 1h; retry_max = 2h;")


def session_peaks(args):
    work = tempfile.mkdtemp(prefix="m1l-heap-")
    port, ctrl = C.free_port(), C.free_port()
    conf_path = os.path.join(work, "meta1lite.conf")
    with open(conf_path, "w") as f:
        f.write(relay_conf(work, port, C.free_port()))
    exe = micropython()
    proc = subprocess.Popen([exe, "-X", "heapsize=" + args.heap, DRIVER, "serve", conf_path, str(ctrl),
                             str(args.interval_ms)], env=C.micropython_env(C.bundle()), cwd=work,
                            stdout=subprocess.PIPE, stderr=open(os.path.join(work, "daemon.log"), "wb"),
                            text=True)
    start = None
    end = time.time() + 30
    while time.time() < end:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("START"):
            start = [int(x) for x in line.split()[1:]]
        if line.startswith("READY"):
            break
    if start is None:
        proc.kill()
        print("heap driver did not start: %s" % open(os.path.join(work, "daemon.log")).read()[-800:])
        return
    sock = socket.create_connection(("127.0.0.1", ctrl), timeout=60)
    rf = sock.makefile("r")

    def peak():
        sock.sendall(b"PEAK\n")
        p = rf.readline().split()
        return [int(x) for x in p[1:]]

    rows = [["daemon started (after gc.collect)", C.kb(start[0]), "-", C.kb(start[1]), "-", "ok"]]
    small = make_big(2048)
    idle = peak()
    rows.append(["idle", C.kb(idle[0]), C.kb(idle[1]), C.kb(idle[2]), idle[3], "ok"])
    phases = [("one session, one 2 KB message", lambda: send(port, small)),
              ("one %s message" % args.big, lambda: send(port, make_big(C.parse_size(args.big)))),
              ("%d concurrent sessions x 5 msgs of 2 KB" % args.sessions,
               lambda: concurrent(port, small, args.sessions))]
    for name, fn in phases:
        status = "ok"
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a figure, not a test
            status = "FAILED: %s" % str(exc)[:60]
        p = peak()
        rows.append([name, C.kb(p[0]), C.kb(p[1]), C.kb(p[2]), p[3], status])
    sock.sendall(b"STOP\n")
    rf.readline()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    C.table("heap during SMTP (MicroPython -X heapsize=%s, daemon in-process, sampled every %d ms; "
            "relative to the driver's baseline of %s)" % (args.heap, args.interval_ms, C.kb(start[2])),
            ["phase", "peak live", "peak alloc", "min free", "samples", "result"], rows)


def concurrent(port, data, sessions):
    errors = []

    def worker():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
                for _ in range(5):
                    s.sendmail("a@relay.test", ["b@example.org"], data)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    ts = [threading.Thread(target=worker) for _ in range(sessions)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError("%d of %d sessions failed: %s" % (len(errors), sessions, errors[0]))


def accepts_big(heap_bytes, big, timeout):
    work = tempfile.mkdtemp(prefix="m1l-heapmin-")
    port = C.free_port()
    d = C.start_at_heap(work, relay_conf(work, port, C.free_port()), port, heap_bytes)
    if d is None:
        return False, "did not start"
    try:
        send(port, make_big(big), timeout=timeout)
        alive = d.proc.poll() is None
        return alive, "250" if alive else "died after 250"
    except Exception as exc:  # noqa: BLE001
        return False, str(exc)[:50]
    finally:
        d.stop()


def bisect(args):
    lo, hi, step = C.parse_size(args.bisect_lo), C.parse_size(args.bisect_hi), C.parse_size(args.bisect_step)
    big = C.parse_size(args.big)
    rows = []
    ok, why = accepts_big(hi, big, args.timeout)
    rows.append([C.kb(hi), why])
    if not ok:
        C.table("bisection", ["heapsize", "result"], rows)
        print("smallest heap: above %s" % C.kb(hi))
        return
    good = hi
    while hi - lo > step:
        mid = (lo + hi) // 2 // 1024 * 1024
        ok, why = accepts_big(mid, big, args.timeout)
        rows.append([C.kb(mid), why])
        if ok:
            hi = good = mid
        else:
            lo = mid
    C.table("smallest -X heapsize accepting one %s message (`micropython -m meta1lite run`, "
            "bundle, all modules)" % args.big, ["heapsize", "result"], rows)
    print("smallest heap that accepts a %s message: %s (resolution %s)" % (args.big, C.kb(good), args.bisect_step))


def sim_firmware():
    from helpers.board import firmware
    try:
        return firmware()["path"]
    except BaseException as exc:  # noqa: BLE001 - pytest's skip/fail when it cannot be built
        raise SystemExit("--micropython sim: %s" % exc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heap", default="1M", help="heap of the import and session runs")
    ap.add_argument("--big", default="5M")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--interval-ms", type=int, default=5)
    ap.add_argument("--bisect-lo", default="64K")
    ap.add_argument("--bisect-hi", default="2M")
    ap.add_argument("--bisect-step", default="8K")
    ap.add_argument("--no-bisect", action="store_true")
    ap.add_argument("--no-imports", action="store_true")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--micropython", help="sim (the sim board's 32-bit unix port) or a binary's path")
    args = ap.parse_args()
    if args.micropython and not args.no_bisect:
        ap.error("--micropython takes the figures of parts 1 and 2 only: add --no-bisect")
    if args.micropython:
        EXE.append(sim_firmware() if args.micropython == "sim" else args.micropython)
    if not micropython():
        print("micropython: not installed")
        return
    print("heap.py: %s" % C.machine())
    print("parameters: heap=%s big=%s sessions=%d interval=%dms bisect=%s..%s step %s; bundle %s; %s"
          % (args.heap, args.big, args.sessions, args.interval_ms, args.bisect_lo, args.bisect_hi,
             args.bisect_step, C.bundle(), micropython()))
    if not args.no_imports:
        import_costs(args.heap)
    session_peaks(args)
    if not args.no_bisect:
        bisect(args)


if __name__ == "__main__":
    main()

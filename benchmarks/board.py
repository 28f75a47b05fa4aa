#!/usr/bin/env python3
"""Heap figures of the simulated Pico W (boards/sim/: meta1lite frozen into a 32-bit
MicroPython unix port, mbedtls allocating from the GC heap), issue 8 item 3.

    .venv/bin/python benchmarks/board.py [--messages 100] [--clients 3]
                     [--lo 64K] [--hi 384K] [--step 8K] [--repeat 3]
                     [--no-bisect --heap 192448] [--only plain|tls] [--sessions]
                     [--heap-map]

  1. import cost: heap in use (gc.mem_alloc after gc.collect) after importing every
     frozen module of the relay, minus the same figure before; and what one verified
     TLS handshake needs (the smallest heap it completes in, less what was in use).
  2. the smallest -X heapsize (bisected in --step steps between --lo and --hi) at which
     the board still relays --messages messages of 2-20 KB sent by --clients concurrent
     smtplib sessions while smtpc delivers them:
       (a) plain SMTP to an aiosmtpd next hop,
       (b) STARTTLS with certificate verification (ca_file, trustme) and AUTH to an
           aiosmtpd smarthost.
     A run passes when every message is delivered, the log has no MemoryError / out of
     memory / ENOMEM and no client session was dropped. A 4xx refusal (452: flash
     full, issue 8 item 4) is retried by the client after RETRY_S and counted; after
     a 421 (low memory: the relay closes the session) the client connects again.
     A heap passes when all --repeat runs at it pass.
With --no-bisect each scenario runs at --heap only. --sessions prints only the relay's
live heap (`status`) idle, per connected session and after a message from each.
--heap-map boots the relay through a /flash/main.py that prints MicroPython's heap
report and block map (micropython.mem_info(1)) at the first file open the journal's
handle reserve could not serve, or the first ENOMEM of a delivery (a TLS handshake's);
a failed run prints its summary and the log's path.
Figures only, no assertions.
"""
import argparse
import logging
import os
import random
import re
import smtplib
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import trustme  # noqa: E402
from helpers.board import SimBoard, firmware, free_port, load_profile, sim_config, via_route  # noqa: E402
from helpers.nexthop import NextHop  # noqa: E402
from test_board_sim import OUT_OF_MEMORY, SMARTHOST_ROUTE, SMARTHOST_SMTPC  # noqa: E402

MIN_SIZE, MAX_SIZE = 2048, 20480         # message sizes (bytes), issue 8
SEED = 8
USER, PASSWORD = "me", "s3cret-pw"
STALL_S = 60                             # no delivery progress for this long: failed
CLIENT_TIMEOUT_S = 60
RETRY_S = 1.0                            # a 4xx refusal (flash full): the client tries again
MAX_RETRIES = 60                         # per message, then the session counts as dropped
REPEAT = 3                               # runs that must all pass for a heap to count as passing
HEAP_MAP = []                            # --heap-map given
# /flash/main.py with --heap-map: the sim's boot (boards/sim/main.py) with the report
HEAP_MAP_MAIN = """import errno
import micropython
import m1lboot
from meta1lite import heap
_call = heap.Reserve.call
_shown = []


def _reporting(self, fn, *args):
    try:
        return _call(self, fn, *args)
    except MemoryError:
        if not _shown:
            _shown.append(1)
            print("HEAP MAP: a %d-byte block's open failed" % self.size)
            micropython.mem_info(1)
        raise


heap.Reserve.call = _reporting
from meta1lite import smtpc
_failed = smtpc._Session._io_failed


def _tls_reporting(self, exc, doing, timeout):
    if not _shown and getattr(exc, "errno", None) == errno.ENOMEM:
        _shown.append(1)
        print("HEAP MAP: ENOMEM %s %s" % (doing, self.relay))
        micropython.mem_info(1)
    return _failed(self, exc, doing, timeout)


smtpc._Session._io_failed = _tls_reporting
m1lboot.run("/flash")
"""


# --- import cost ----------------------------------------------------------------------

def frozen_modules():
    """Every meta1lite module that runs on the board (the frozen ones but __main__)."""
    import build_firmware  # firmware/ is on the path (helpers.board)
    mods = []
    for rel in build_firmware.meta1lite_modules():
        name = "meta1lite." + rel[:-3].replace("/", ".")
        if not name.endswith(".__main__"):
            mods.append(name[:-len(".__init__")] if name.endswith(".__init__") else name)
    return mods


def import_cost(heap):
    work = tempfile.mkdtemp(prefix="m1l-board-imp-")
    board = SimBoard(work, heap=heap)
    mods = frozen_modules()
    code = ("import gc\ngc.collect()\na = gc.mem_alloc()\n"
            + "".join("import %s\n" % m for m in mods)
            + "gc.collect()\nprint('IMPORT', a, gc.mem_alloc(), gc.mem_free())\n")
    out = board.run_tool(code).stdout.split()
    before, after, free = int(out[1]), int(out[2]), int(out[3])
    print("import cost (sim firmware, frozen, -X heapsize=%d): %d modules, heap in use %s "
          "before, %s after: %s (%d bytes); %s free" % (heap, len(mods), C.kb(before), C.kb(after),
                                                       C.kb(after - before), after - before, C.kb(free)))


# --- what one TLS handshake needs ----------------------------------------------------

HANDSHAKE_PROBE = """
import gc, socket
from meta1lite import tls
ctx = tls.client_tls_context(True, %r)
s = socket.socket()
s.connect(socket.getaddrinfo('127.0.0.1', %d)[0][-1])
gc.collect()
used = gc.mem_alloc()
ss = ctx.wrap_socket(s, server_hostname='smtp.isp.test')
print('HANDSHAKE', used, ss.read(4))
ss.close()
"""
HANDSHAKE_LO, HANDSHAKE_HI, HANDSHAKE_STEP = 24 * 1024, 128 * 1024, 1024


def tls_server(pki):
    """A host TLS server (the smarthost's certificate) answering b"ok" once per
    connection; its port."""
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.cert, pki.key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            conn, _ = listener.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as tconn:
                    tconn.sendall(b"ok\r\n")
            except (OSError, ssl.SSLError):
                pass
    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def handshake_heap(pki):
    """The smallest -X heapsize at which the sim completes a verified handshake, and
    the heap in use before it: what a handshake needs, record buffers included."""
    code = HANDSHAKE_PROBE % (pki.ca, tls_server(pki))
    board = SimBoard(tempfile.mkdtemp(prefix="m1l-board-tls-"))

    def passes(heap):
        try:
            return "HANDSHAKE" in board.run_tool(code, heap).stdout
        except AssertionError:
            return False
    lo, hi = HANDSHAKE_LO, HANDSHAKE_HI
    while hi - lo > HANDSHAKE_STEP:
        mid = (lo + hi) // 2 // HANDSHAKE_STEP * HANDSHAKE_STEP
        lo, hi = (lo, mid) if passes(mid) else (mid, hi)
    out = board.run_tool(code, hi).stdout
    used = int(out[out.index("HANDSHAKE"):].split()[1])
    print("TLS handshake (sim, STARTTLS verified against ca_file): completes in a %s heap "
          "with %s in use before it: it needs ~%s, its 21K of record buffers included"
          % (C.kb(hi), C.kb(used), C.kb(hi - used)))


# --- live heap per session ---------------------------------------------------------

PROBE_SESSIONS = 3
PROBE_SETTLE_S = 1.0


def session_heap(heap):
    """The relay's live heap (`status`, after a collection) idle, with each of
    PROBE_SESSIONS idle SMTP sessions connected, and after a message from each."""
    from meta1lite.cli import channel
    with NextHop() as hop:
        port, control = free_port(), free_port()
        board = SimBoard(tempfile.mkdtemp(prefix="m1l-board-probe-"), heap=heap)
        # the benchmark's own loopback control channel (the sim, a unix port, has one;
        # a board's console asks in-process and needs none)
        board.create_flash(sim_config(port, via_route(hop.port),
                                      extra="control = 127.0.0.1:%d;" % control))
        board.start(port)
        rows = []

        def sample(what):
            time.sleep(PROBE_SETTLE_S)
            r = channel.request({"control": ("127.0.0.1", control)}, "status")
            rows.append([what, C.kb(r["heap"]), C.kb(r["heap_free"]), C.kb(r["heap_high_water"])])
        try:
            sample("idle")
            sessions = []
            for n in range(PROBE_SESSIONS):
                sessions.append(smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S))
                sessions[-1].ehlo("probe.test")
                sample("%d session(s) after EHLO" % (n + 1))
            for n, s in enumerate(sessions):
                s.sendmail("dev@home.test", ["user%d@dest.test" % n], message(n, MIN_SIZE))
            sample("after a %d-byte message each" % MIN_SIZE)
            for s in sessions:
                s.quit()
            sample("sessions closed")
        finally:
            board.stop()
    C.table("live heap of the sim relay at %s (status after a collection)" % C.kb(heap),
            ["when", "in use", "free", "high-water"], rows)
    start = re.search(r"heap at start \(in use after each step\): (.*)", board.log())
    print("start-up, bytes in use after each step (mcp's log): %s"
          % (start.group(1) if start else "not logged"))


# --- one relay run -------------------------------------------------------------------

def message(n, size):
    head = ("From: <dev@home.test>\r\nTo: <user%d@dest.test>\r\nSubject: test %d\r\n"
            "Date: Tue, 24 Nov 2026 14:08:00 +0000\r\nMessage-ID: <%d.board@home.test>\r\n\r\n"
            % (n, n, n)).encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.\r\n"
    body = (line * (size // len(line) + 1))[:max(0, size - len(head) - 2)]
    return head + body.rstrip(b"\r\n") + b"\r\n"


class Clients:
    """`clients` smtplib sessions sending `count` messages in all; stop() aborts them."""

    def __init__(self, port, count, clients):
        rnd = random.Random(SEED)
        self.sizes = [rnd.randint(MIN_SIZE, MAX_SIZE) for _ in range(count)]
        self.port, self.count, self.clients = port, count, clients
        self.sent, self.errors, self.abort, self.refusals = set(), [], False, 0
        self.tries = {}                 # message -> 4xx replies it met
        self.threads = [threading.Thread(target=self.worker, args=(w,), daemon=True)
                        for w in range(clients)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def alive(self):
        return any(t.is_alive() for t in self.threads)

    def connect(self):
        """A session; 421 at connect (the admission limit still counting a closed
        connection) is retried as a real client would."""
        for _ in range(MAX_RETRIES):
            try:
                return smtplib.SMTP("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT_S)
            except smtplib.SMTPConnectError as exc:
                if not 400 <= exc.smtp_code < 500 or self.abort:
                    raise
                self.refusals += 1
                time.sleep(RETRY_S)
        raise smtplib.SMTPException("connection refused %d times" % MAX_RETRIES)

    def worker(self, w):
        todo = list(range(w, self.count, self.clients))
        try:
            while todo and not self.abort:
                with self.connect() as s:
                    while todo and not self.abort and self.send(s, todo[0]):
                        todo.pop(0)
        except (OSError, smtplib.SMTPException) as exc:
            if not self.abort:
                self.errors.append("client %d: %r" % (w, exc))

    def send(self, s, n):
        """One message; a 4xx reply (452 flash full) is retried as a real client would.
        False after a 421 (the relay closed the session: low memory): reconnect."""
        while True:
            try:
                s.sendmail("dev@home.test", ["user%d@dest.test" % n], message(n, self.sizes[n]))
                self.sent.add(n)
                return True
            except smtplib.SMTPResponseException as exc:
                if not 400 <= exc.smtp_code < 500 or self.abort:
                    raise
                self.refusals += 1
                self.tries[n] = self.tries.get(n, 0) + 1
                if self.tries[n] >= MAX_RETRIES:
                    raise smtplib.SMTPException("message %d refused %d times" % (n, MAX_RETRIES))
                time.sleep(RETRY_S)
                if exc.smtp_code == 421:
                    return False
                s.rset()            # smtplib leaves the transaction open after a DATA 4xx

    def stop(self):
        self.abort = True
        for t in self.threads:
            t.join(CLIENT_TIMEOUT_S)


def delivered(hop):
    found = set()
    for m in list(hop.messages):
        hit = re.search(rb"Subject: test (\d+)", m.content)
        if hit:
            found.add(int(hit.group(1)))
    return found


def out_of_memory(log):
    return [line for line in log.splitlines() if any(w in line for w in OUT_OF_MEMORY)]


class Pki:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="m1l-board-pki-")
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "smtp.isp.test")
        self.ca, self.cert, self.key = (os.path.join(self.dir, n) for n in ("ca.pem", "cert.pem", "key.pem"))
        ca.cert_pem.write_to_path(self.ca)
        cert.private_key_pem.write_to_path(self.key)
        cert.cert_chain_pems[0].write_to_path(self.cert)


def next_hop(pki):
    if pki is None:
        return NextHop()
    return NextHop(cert=(pki.cert, pki.key), require_starttls=True, users={USER: PASSWORD})


def prepare(board, port, hop, pki):
    if pki is None:
        board.create_flash(sim_config(port, via_route(hop.port)))
    else:
        board.create_flash(sim_config(port, via_route(hop.port, extra=SMARTHOST_ROUTE),
                                      smtpc_extra=SMARTHOST_SMTPC))
        with open(pki.ca) as f:
            board.put_text("ca.pem", f.read())
        board.put_text("smarthost.password", PASSWORD + "\n")
    if HEAP_MAP:
        board.put_text("main.py", HEAP_MAP_MAIN)


def watch(board, hop, clients, count):
    """Wait until all is delivered, or a failure shows; None (passed) or the reason."""
    last, since = -1, time.time()
    while True:
        if board.proc.poll() is not None:
            return "board exited %s" % board.proc.returncode
        bad = out_of_memory(board.log())
        if bad:
            return "%d out-of-memory lines, first: %s" % (len(bad), re.sub(r"^.*?\]: ", "", bad[0])[:100])
        if clients.errors:
            return "session dropped: %s" % clients.errors[0][:90]
        got = len(delivered(hop))
        if got >= count and not clients.alive():
            return None
        if got != last:
            last, since = got, time.time()
        elif time.time() - since > STALL_S:
            return "stalled at %d delivered" % got
        time.sleep(0.2)


def relay_run(heap, count, nclients, pki):
    """One run at `heap`: (passed, delivered, seconds, reason)."""
    work = tempfile.mkdtemp(prefix="m1l-board-%d-" % heap)
    with next_hop(pki) as hop:
        port = free_port()
        board = SimBoard(work, heap=heap)
        prepare(board, port, hop, pki)
        t0 = time.time()
        try:
            board.start(port)
        except AssertionError as exc:
            board.kill()
            return False, 0, 0.0, 0, "did not start: %s" % str(exc).splitlines()[-1][:80]
        clients = Clients(port, count, nclients).start()
        try:
            reason = watch(board, hop, clients, count)
        finally:
            clients.stop()
            board.stop()
        seconds = time.time() - t0
        got = delivered(hop)
        if HEAP_MAP and reason is not None:
            print_heap_map(board)
        if reason is None and pki is not None and not all(m.tls for m in hop.messages):
            reason = "delivered without TLS"
    return reason is None, len(got), seconds, clients.refusals, reason or "ok"


def print_heap_map(board):
    lines = board.log().splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("HEAP MAP")]
    if not at:
        print("    no heap map: the failure was neither a file open nor an ENOMEM (%s)"
              % board.log_path)
        return
    summary = [line.strip() for line in lines[at[0]:at[0] + 8]
               if line.startswith(("HEAP", "GC:", " No.", "No."))]
    print("    %s\n    (the block map: %s)" % ("\n    ".join(summary), board.log_path))


# --- bisection ----------------------------------------------------------------------

def bisect(name, args, pki):
    rows = []

    def attempt(heap):
        # a heap passes only if every one of --repeat runs passes: at the margin a
        # fragmented heap fails some runs and not others
        for _ in range(args.repeat):
            ok, got, secs, refused, why = relay_run(heap, args.messages, args.clients, pki)
            rows.append([C.kb(heap), "%d/%d" % (got, args.messages), "%.0f" % secs,
                         "%.1f" % (got / secs) if secs else "-", refused, why])
            print("  %s %s: %s" % (name, C.kb(heap), why), flush=True)
            if not ok:
                return False
        return True

    lo, hi, step = args.lo, args.hi, args.step
    if args.no_bisect:
        ok = attempt(args.heap)
        result = "%s at %s" % ("passes" if ok else "FAILS", C.kb(args.heap))
    elif not attempt(hi):
        result = "fails at all heaps up to %s" % C.kb(hi)
    else:
        hi, lo = C.bisect_heap(attempt, lo, hi, step)
        result = "smallest heap that passes: %s (%d bytes; %s fails)" % (C.kb(hi), hi, C.kb(lo))
    C.table("%s: %d clients, %d messages of 2-20 KB" % (name, args.clients, args.messages),
            ["heapsize", "delivered", "seconds", "msg/s", "4xx retried", "result"], rows)
    print("%s: %s" % (name, result), flush=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100, help="messages per run (issue: 500)")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--lo", type=C.parse_size, default=C.parse_size("64K"))
    ap.add_argument("--hi", type=C.parse_size, default=C.parse_size("384K"))
    ap.add_argument("--step", type=C.parse_size, default=C.parse_size("8K"))
    ap.add_argument("--no-bisect", action="store_true", help="one run per scenario at --heap")
    ap.add_argument("--heap", type=C.parse_size, default=load_profile()["heap_bytes"])
    ap.add_argument("--only", choices=("plain", "tls"), help="run one scenario")
    ap.add_argument("--repeat", type=int, default=REPEAT, help="runs that must all pass at a heap")
    ap.add_argument("--sessions", action="store_true", help="only the live heap per session")
    ap.add_argument("--heap-map", action="store_true",
                    help="print the heap map at the first file open or TLS handshake that fails")
    args = ap.parse_args()
    if args.heap_map:
        HEAP_MAP.append(True)
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)    # aiosmtpd: failed handshakes
    try:
        info = firmware()
    except BaseException as exc:  # noqa: BLE001 - helpers.board skips (pytest) when unbuildable
        print("sim firmware unavailable: %s" % exc)
        return
    print("board.py: %s; sim firmware %s (%s, %d bytes frozen)" % (C.machine(), info["path"],
                                                                 info["compiler"], info["frozen_bytes"]))
    if args.sessions:
        return session_heap(args.heap)
    import_cost(load_profile()["heap_bytes"])
    handshake_heap(Pki())
    results = []
    if args.only != "tls":
        results.append(("(a) plain SMTP next hop", bisect("(a) plain", args, None)))
    if args.only != "plain":
        results.append(("(b) STARTTLS + verify + AUTH smarthost", bisect("(b) tls", args, Pki())))
    print("\nsim Pico W heap figures (%d messages, %d clients):" % (args.messages, args.clients))
    for name, result in results:
        print("  %s: %s" % (name, result))


if __name__ == "__main__":
    main()

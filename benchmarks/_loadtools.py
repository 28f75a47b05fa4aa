#!/usr/bin/env python3
# Stand-ins for Postfix's smtp-source and smtp-sink when Postfix is not installed
# (CPython-only). Same shape of use and output as the Postfix tools:
#   _loadtools.py source -l SIZE -m MSGS -s SESSIONS -f FROM -t TO HOST:PORT
#       one SMTP session per message (as smtp-source does), SESSIONS at a time;
#       prints "ok=N failed=M seconds=S" at the end (bounded: -T seconds overall).
#   _loadtools.py sink HOST:PORT
#       an aiosmtpd server that accepts everything and prints "mesg=N\r" per message.
import argparse
import asyncio
import sys
import time

FILLER = b"La de da de da 1.\r\nLa de da de da 2.\r\nLa de da de da 3.\r\nLa de da de da 4.\r\n"


def make_message(size, sender, rcpt):
    head = ("From: <%s>\r\nTo: <%s>\r\nSubject: benchmark\r\n"
            "Date: Tue, 24 Nov 2026 14:08:00 +0000\r\n\r\n" % (sender, rcpt)).encode()
    n = max(0, size - len(head))
    body = (FILLER * (n // len(FILLER) + 1))[:n]
    if not body.endswith(b"\r\n"):
        body = body[:max(0, len(body) - 2)] + b"\r\n"
    return head + body


async def _reply(reader):
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def one_message(host, port, sender, rcpt, data):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        steps = [None, b"EHLO bench.test\r\n", b"MAIL FROM:<%s>\r\n" % sender.encode(),
                 b"RCPT TO:<%s>\r\n" % rcpt.encode(), b"DATA\r\n"]
        for cmd in steps:
            if cmd:
                writer.write(cmd)
            code = await _reply(reader)
            if code >= 400:
                return False
        writer.write(data + b".\r\n")
        ok = (await _reply(reader)) == 250
        writer.write(b"QUIT\r\n")
        try:
            await _reply(reader)
        except ConnectionError:
            pass
        return ok
    finally:
        writer.close()


async def source(args):
    host, port = args.target.rsplit(":", 1)
    data = make_message(args.l, args.f, args.t)
    todo = list(range(args.m))
    counts = {"ok": 0, "failed": 0}
    deadline = time.monotonic() + args.T

    async def worker():
        while todo and time.monotonic() < deadline:
            todo.pop()
            try:
                ok = await asyncio.wait_for(one_message(host, int(port), args.f, args.t, data), 60)
            except (OSError, ConnectionError, asyncio.TimeoutError):
                ok = False
            counts["ok" if ok else "failed"] += 1
    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(args.s)])
    print("ok=%d failed=%d seconds=%.3f" % (counts["ok"], counts["failed"], time.perf_counter() - t0))


def sink(args):
    from aiosmtpd.controller import Controller
    host, port = args.target.rsplit(":", 1)
    state = {"n": 0}

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            state["n"] += 1
            sys.stdout.write("mesg=%d\r" % state["n"])
            sys.stdout.flush()
            return "250 2.0.0 Ok: queued"

    ctl = Controller(Handler(), hostname=host, port=int(port))
    ctl.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ctl.stop()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("source")
    s.add_argument("-l", type=int, default=2048)
    s.add_argument("-m", type=int, default=100)
    s.add_argument("-s", type=int, default=10)
    s.add_argument("-f", default="a@relay.test")
    s.add_argument("-t", default="b@example.org")
    s.add_argument("-T", type=float, default=600.0, help="overall time bound (s)")
    s.add_argument("target")
    k = sub.add_parser("sink")
    k.add_argument("target")
    args = ap.parse_args()
    if args.cmd == "source":
        asyncio.run(source(args))
    else:
        import signal
        signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        sink(args)


if __name__ == "__main__":
    main()

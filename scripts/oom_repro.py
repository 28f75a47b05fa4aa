# Item 2 reproduction: the MicroPython daemon (unix port, .mpy bundle) at a small
# heap, many concurrent large messages, deliveries to a sink next hop; prints the
# out-of-memory lines, AttributeErrors, refusals, duplicates, and a restart check.
# Usage: .venv/bin/python scripts/oom_repro.py [clients] [size_kb] [heap] [seconds]
import collections
import os
import smtplib
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from helpers.daemon import Daemon, config_text, free_port  # noqa: E402
from helpers.nexthop import NextHop  # noqa: E402


def send(port, token, size, out):
    head = ("From: <s@c.test>\r\nTo: <r@example.org>\r\nSubject: %s\r\nMessage-ID: <%s@c>\r\n\r\n"
            % (token, token)).encode()
    data = head + (b"x" * 70 + b"\r\n") * (size // 72)
    try:
        c = smtplib.SMTP("127.0.0.1", port, timeout=60)
        c.ehlo("c.test")
        c.mail("s@c.test")
        c.rcpt("r@example.org")
        code, _ = c.data(data)
        out.append((token, code))
        c.quit()
    except (OSError, smtplib.SMTPException) as exc:
        out.append((token, repr(exc)[:40]))


def main():
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    size = int(sys.argv[2]) * 1024 if len(sys.argv) > 2 else 500 * 1024
    heap = sys.argv[3] if len(sys.argv) > 3 else "1M"
    wait = float(sys.argv[4]) if len(sys.argv) > 4 else 30
    work = tempfile.mkdtemp(prefix="m1l-oom-")
    port = free_port()
    with NextHop() as hop:
        conf = config_text(work + "/spool", port,
                           smtps_extra="max_connections = 60; max_connections_per_client = 60;"
                           " max_messages_per_client_per_minute = 1000000;",
                           top_extra='qmgr { max_queue_size = 500M; retry_min = 1s; }\n'
                           'smar { route "*" { via = "[127.0.0.1]:%d"; } }' % hop.port)
        d = Daemon("micropython", work, conf, port, heap=heap).start()
        results = []
        for rnd in range(2):
            threads = [threading.Thread(target=send, args=(port, "r%dc%d" % (rnd, n), size, results))
                       for n in range(clients)]
            [t.start() for t in threads]
            [t.join() for t in threads]
        time.sleep(wait)
        d.kill()
        log = d.log()
        counts = collections.Counter(m.content.split(b"Message-ID: <")[1].split(b"@")[0]
                                     for m in hop.messages if b"Message-ID: <" in m.content)
        acked = [t for t, c in results if c == 250]
        print("replies:", collections.Counter(c for _, c in results))
        print("out of memory lines:", log.count("out of memory"))
        print("NoneType errors:", log.count("NoneType"))
        print("delivery failed lines:", log.count("delivery failed"))
        print("delivered:", sum(counts.values()), "distinct:", len(counts),
              "duplicates:", sum(v - 1 for v in counts.values()))
        print("acked not delivered:", len([t for t in acked if t.encode() not in counts]))
        d2 = Daemon("micropython", work, conf, port, heap=heap)
        try:
            d2.start()
            time.sleep(3)
            print("restart: ok;", [ln for ln in d2.log().splitlines() if "recover" in ln][-1:])
        except AssertionError as exc:
            print("restart FAILED:", str(exc)[-600:])
        finally:
            d2.stop()
        print("work dir:", work)
        with open(os.path.join(work, "daemon.log")) as f:
            bad = [ln for ln in f if "rror" in ln][:8]
        print("".join(bad))


main()

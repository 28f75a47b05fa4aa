# Latency of one relay, one message at a time (CPython-only, the driver side).
# Owns: a next-hop sink on loopback that stamps the moment it sends the 250 of each
# DATA, and a client that stamps the moment it sent its final dot; both in this
# process on one clock (time.perf_counter), so that a message's latency is
# sink's 250 - client's dot. One session per message, one recipient, the next
# message only after the previous one arrived (1 recipient x 1 session).
import asyncio
import threading
import time

from _loadtools import _reply, make_message

EHLO = (b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n"
        b"250 ENHANCEDSTATUSCODES\r\n")


class StampSink:
    """An SMTP sink in its own thread; self.stamps: perf_counter of each final 250."""

    def __init__(self, port):
        self.port = port
        self.stamps = []
        self._ready = threading.Event()
        self._loop = None
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self._ready.wait(10)

    def _run(self):
        self._loop = asyncio.new_event_loop()
        srv = self._loop.run_until_complete(asyncio.start_server(self._session, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            srv.close()

    async def _session(self, reader, writer):
        writer.write(b"220 sink.test ESMTP\r\n")
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(EHLO)
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    writer.write(b"250 2.0.0 Ok: queued\r\n")
                    self.stamps.append(time.perf_counter())
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 2.0.0 Ok\r\n")
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        writer.close()

    def stop(self):
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._t.join(5)


async def _one(port, sender, rcpt, data):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for cmd in (None, b"EHLO bench.test\r\n", b"MAIL FROM:<%s>\r\n" % sender.encode(),
                    b"RCPT TO:<%s>\r\n" % rcpt.encode(), b"DATA\r\n"):
            if cmd:
                writer.write(cmd)
            if await _reply(reader) >= 400:
                return None
        writer.write(data + b".\r\n")
        await writer.drain()
        dot = time.perf_counter()
        if await _reply(reader) != 250:
            return None
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return dot
    finally:
        writer.close()


def measure(port, sink, msgs, size, sender, rcpt, timeout=30.0):
    """Send msgs messages one after another; returns the list of latencies (s)
    of those that arrived (a message that did not arrive in timeout s ends the run)."""
    data = make_message(size, sender, rcpt)
    out = []
    for _ in range(msgs):
        before = len(sink.stamps)
        dot = asyncio.run(_one(port, sender, rcpt, data))
        if dot is None:
            break
        end = time.perf_counter() + timeout
        while len(sink.stamps) == before and time.perf_counter() < end:
            time.sleep(0.0005)
        if len(sink.stamps) == before:
            break
        out.append(sink.stamps[before] - dot)
    return out


def summary(lat):
    """(median ms, p99 ms) or (None, None)."""
    if not lat:
        return None, None
    s = sorted(lat)
    return 1000 * s[len(s) // 2], 1000 * s[min(len(s) - 1, int(len(s) * 0.99))]

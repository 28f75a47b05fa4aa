# compat: the runtime-difference layer, tested on CPython and MicroPython alike.
import time

from support import fresh_dir

from meta1lite import compat, durable, logring, streams, tls

asyncio = compat.asyncio


class FakeWriter:
    def __init__(self):
        self.writes = []
        self.drains = 0

    def write(self, data):
        self.writes.append(bytes(data))

    async def drain(self):
        self.drains += 1


class QueueingWriter:
    """A transport that keeps what it is given, as CPython 3.12+'s selector transport
    queues the caller's object itself when the socket is full."""

    def __init__(self):
        self.queued = []

    def write(self, data):
        self.queued.append(data)

    async def drain(self):
        pass


def test_write_all_never_leaves_the_callers_buffer_queued():
    # smtpc sends a body chunk from a buffer it reads the next chunk into: a queued
    # reference would send the next chunk's bytes in its place
    w = QueueingWriter()
    buf = bytearray(b"first chunk\r\n")

    async def go():
        await streams.write_all(w, buf)
        await streams.write_all(w, memoryview(buf)[:5])
    asyncio.run(go())
    buf[:] = b"NEXT CHUNK!\r\n"             # the same length: reused in place
    if streams.TRANSPORT_KEEPS_BUFFERS:      # CPython: copies were queued
        assert [bytes(q) for q in w.queued] == [b"first chunk\r\n", b"first"]
    else:                                   # MicroPython's stream copies what it keeps
        assert w.queued[0] is buf


def test_replaced_clock_drives_monotonic_and_wall_time():
    now = [1000.0]
    compat.set_clock(lambda: now[0], lambda: 86400 * 365.0)
    try:
        assert compat.monotonic() == 1000.0
        now[0] += 3600
        assert compat.monotonic() == 4600.0
        assert compat.wall_time() == 86400 * 365.0
    finally:
        compat.set_clock()
    a = compat.monotonic()
    b = compat.monotonic()
    assert b >= a


def test_the_real_clock_counts_on_from_a_long_uptime():
    # MicroPython's clock from ticks_ms: 20 years after boot it still counts every
    # millisecond (on the unix port's doubles; a Pico W's floats keep 8-s steps, which
    # tests/test_board_sim.py covers). CPython's time.monotonic has no uptime to set.
    if not hasattr(time, "ticks_ms"):
        return
    years_s = 20 * 365 * 86400
    compat.set_uptime(years_s)
    a = compat.real_monotonic()
    time.sleep(0.2)
    b = compat.real_monotonic()
    assert years_s <= a < years_s + 1
    assert 0.15 < b - a < 1.0


class _Epoch2000Time:
    # stm32's time module: time() and gmtime() count from 2000-01-01
    def __init__(self, real):
        self.real = real

    def time(self):
        return self.real.time() - compat.UNIX_TO_2000_S

    def gmtime(self, seconds):
        return self.real.gmtime(seconds + compat.UNIX_TO_2000_S)


def test_a_port_counting_from_2000_still_keeps_unix_times():
    # stm32 (MICROPY_EPOCH_IS_1970 unset): wall-clock times, lifetimes and Date: fields
    # stay Unix times, or every one looks older than 2025 and counts as unknown
    real = compat.time
    board = _Epoch2000Time(real)
    assert compat._epoch_offset(board.gmtime) == compat.UNIX_TO_2000_S
    assert compat._epoch_offset(real.gmtime) == 0
    saved = compat.EPOCH_OFFSET
    compat.time, compat.EPOCH_OFFSET = board, compat.UNIX_TO_2000_S
    try:
        assert abs(compat.wall_time() - real.time()) <= 2
        assert compat.rfc5322_date(1796083200) == "Tue, 1 Dec 2026 00:00:00 +0000"
        assert compat.format_time(1796083200, utc=True) == "Dec  1 00:00:00"
    finally:
        compat.time, compat.EPOCH_OFFSET = real, saved


def test_rfc5322_date_and_syslog_time():
    assert compat.rfc5322_date(0) == "Thu, 1 Jan 1970 00:00:00 +0000"
    assert compat.rfc5322_date(1795528080) == "Tue, 24 Nov 2026 13:48:00 +0000"
    assert compat.format_time(1795528080, utc=True) == "Nov 24 13:48:00"


def test_pid_is_stable_and_urandom_is_random():
    assert compat.getpid() == compat.getpid() > 0
    assert len(compat.urandom(16)) == 16
    assert compat.urandom(16) != compat.urandom(16)


def test_pem_to_der_takes_the_base64_between_the_markers():
    pem = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAwQF\n-----END CERTIFICATE-----\n"
    assert tls.pem_to_der(pem) == bytes([0, 1, 2, 3, 4, 5])
    assert tls.pem_to_der(pem.encode()) == bytes([0, 1, 2, 3, 4, 5])
    try:
        tls.pem_to_der("no pem here")
    except ValueError:
        pass
    else:
        raise AssertionError("expected ValueError")


def test_write_all_writes_in_bounded_chunks_and_drains_each():
    async def go():
        w = FakeWriter()
        data = bytes(range(256)) * 40      # 10240 bytes
        await streams.write_all(w, data)
        assert b"".join(w.writes) == data
        assert max(len(x) for x in w.writes) <= compat.WRITE_CHUNK
        chunks = (len(data) + compat.WRITE_CHUNK - 1) // compat.WRITE_CHUNK
        assert w.drains == len(w.writes) == chunks
    asyncio.run(go())


def test_wait_for_times_out_with_a_recognisable_error():
    async def slow():
        await asyncio.sleep(5)

    async def go():
        try:
            await compat.wait_for(slow(), 0.05)
        except Exception as exc:  # noqa: BLE001
            assert compat.is_timeout(exc), exc
        else:
            raise AssertionError("no timeout")
    asyncio.run(go())


async def _forever():
    await asyncio.sleep(10)


def test_wait_for_returns_and_a_later_shorter_wait_fires_first():
    # a short wait begun after a long one does not wait for the long one's deadline
    order = []

    async def value():
        await asyncio.sleep(0)
        return 42

    async def waits(name, seconds):
        try:
            await compat.wait_for(_forever(), seconds)
        except Exception as exc:  # noqa: BLE001
            assert compat.is_timeout(exc), exc
            order.append(name)

    async def go():
        assert await compat.wait_for(value(), 5) == 42
        long_wait = asyncio.create_task(waits("long", 2))
        await asyncio.sleep(0)
        await waits("short", 0.05)
        assert order == ["short"], order
        await long_wait
        assert order == ["short", "long"], order
    asyncio.run(go())


def _cancel_while_waiting(timeout_s, hold_s):
    # what a task waiting in compat.wait_for raises when another task, having held
    # the CPU for hold_s, cancels it
    seen = []

    async def waiter():
        try:
            await compat.wait_for(_forever(), timeout_s)
        except BaseException as exc:  # noqa: BLE001 - CancelledError is one
            seen.append(exc)

    async def go():
        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        time.sleep(hold_s)
        task.cancel()
        await asyncio.sleep(0.2)
    asyncio.run(go())
    assert len(seen) == 1 and isinstance(seen[0], asyncio.CancelledError), seen
    assert not compat.is_timeout(seen[0])


def test_wait_for_passes_a_cancel_from_elsewhere_through():
    _cancel_while_waiting(5, 0.01)


def test_wait_for_a_cancel_that_meets_the_deadline_stays_a_cancel():
    # the deadline passes while another task holds the CPU, which then cancels the
    # waiting task: a stop must not be taken for a timeout (qmgr retries those)
    _cancel_while_waiting(0.05, 0.1)


LISTEN_PORTS = (23000, 43000)      # a free port is looked for here (MicroPython's
                                   # Server does not tell the port it was given)


async def _server(serve):
    # (server, port) on loopback: the first port of LISTEN_PORTS' range that is free
    port = LISTEN_PORTS[0] + int.from_bytes(compat.urandom(2), "big") % 10000
    while True:
        try:
            return await asyncio.start_server(serve, "127.0.0.1", port), port
        except OSError:
            port += 1
            if port >= LISTEN_PORTS[1]:
                raise


async def _read_or_timeout(reader, seconds, order, name):
    try:
        order.append((name, bytes(await streams.read_now(reader, seconds))))
    except Exception as exc:  # noqa: BLE001
        assert compat.is_timeout(exc), exc
        order.append((name, "timeout"))


def test_read_now_a_later_shorter_read_times_out_first_and_the_longer_gets_its_data():
    # read_now's deadlines (MicroPython: one watcher task wakes at the nearest; no
    # wait_for): a short read begun after a long one does not wait for the long
    # one's deadline, and the long read still returns what comes later
    order, peers = [], []

    async def serve(reader, writer):
        peers.append(writer)

    async def go():
        server, port = await _server(serve)
        streams = []
        while len(streams) < 2:             # (MicroPython: no await in a comprehension)
            streams.append(await asyncio.open_connection("127.0.0.1", port))
        long_read = asyncio.create_task(_read_or_timeout(streams[0][0], 30, order, "long"))
        await asyncio.sleep(0.02)           # waiting: the deadline to wake at is the long one
        await _read_or_timeout(streams[1][0], 0.05, order, "short")
        for writer in peers:
            writer.write(b"hello")
            await writer.drain()
        await long_read
        for writer in peers + [pair[1] for pair in streams]:
            writer.close()
        server.close()
        await server.wait_closed()
    asyncio.run(go())
    assert order == [("short", "timeout"), ("long", b"hello")], order


def test_read_now_passes_a_cancel_through_even_past_its_deadline():
    # the deadline passes while another task holds the CPU, which then cancels the
    # reading task: a stop, not a timeout; and the next read times out as asked
    seen, order, peers = [], [], []

    async def serve(reader, writer):
        peers.append(writer)

    async def reading(reader):
        try:
            await streams.read_now(reader, 0.05)
        except BaseException as exc:  # noqa: BLE001 - CancelledError is one
            seen.append(exc)

    async def go():
        server, port = await _server(serve)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        task = asyncio.create_task(reading(reader))
        await asyncio.sleep(0)
        time.sleep(0.1)
        task.cancel()
        await asyncio.sleep(0.2)
        await _read_or_timeout(reader, 0.05, order, "next")
        for each in peers + [writer]:
            each.close()
        server.close()
        await server.wait_closed()
    asyncio.run(go())
    assert len(seen) == 1 and isinstance(seen[0], asyncio.CancelledError), seen
    assert order == [("next", "timeout")], order


def test_errno_classification():
    import errno
    assert compat.is_connection_error(OSError(errno.ECONNRESET, "reset"))
    assert compat.is_connection_error(OSError(compat.EPIPE))
    assert compat.is_connection_error(EOFError())
    assert not compat.is_connection_error(OSError(errno.ENOENT))
    assert compat.is_no_space(OSError(compat.ENOSPC))
    assert compat.is_timeout(OSError(compat.ETIMEDOUT))
    assert compat.errno_of(OSError(errno.EAGAIN)) == errno.EAGAIN


def test_durable_commit_and_file_helpers():
    d = fresh_dir("compat")
    durable.makedirs(d + "/a/b/c")
    assert durable.is_dir(d + "/a/b/c")
    tmp, final = d + "/a/t.tmp", d + "/a/final"
    with open(tmp, "wb") as f:
        f.write(b"payload")
        durable.fsync_file(f)
    durable.commit_file(tmp, final, d + "/a")
    assert not durable.exists(tmp) and durable.file_size(final) == 7
    durable.remove(final)
    durable.remove(final)          # missing is fine
    assert not durable.exists(final)
    assert durable.free_space(d) > 0


def test_cbor_choice_round_trips_queue_records():
    rec = {"v": 1, "id": "4BQX0A1B2C3D", "rcpt": ["a@b", "c@d"], "size": 2048,
           "body": b"\x00\xff", "held": False, "next": None, "neg": -5}
    data = compat.cbor_dumps(rec)
    assert compat.cbor_loads(data) == rec
    assert compat.cbor_dumps(compat.cbor_loads(data)) == data
    try:
        compat.cbor_loads(data[:-3])
    except compat.CBOR_ERRORS:
        pass
    else:
        raise AssertionError("truncated record decoded")


def test_logger_writes_postfix_shaped_lines_and_keeps_a_ring():
    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

    sink = Sink()
    logger = compat.Logger("relay.test", "info", sink)
    logger.log("info", "smtps", "4BQX0A1B2C3D: client=cam[192.168.1.9]")
    logger.log("debug", "smtps", "not shown")
    logger.log("warning", "qmgr", "disk low")
    lines = sink.text.splitlines()
    assert len(lines) == 2
    # MeTA1's module smtps logs under Postfix's program name smtpd (pflogsumm counts it)
    assert " relay.test meta1lite/smtpd[%d]: 4BQX0A1B2C3D: client=" % compat.getpid() in lines[0]
    assert lines[1].endswith("meta1lite/qmgr[%d]: warning: disk low" % compat.getpid())
    kept = logger.ring.lines(3)
    assert kept[0] == lines[0] and kept[1] == lines[1] and len(kept) == 2
    for n in range(300):
        sink.text = ""
        logger.log("info", "qmgr", "line %d \u00e9" % n)
    kept = logger.ring.lines(10)     # the ring wrapped several times: the newest ten, whole
    assert [line.rsplit(" ", 2)[-2] for line in kept] == [str(n) for n in range(290, 300)]
    assert len(logger.ring.buf) == logring.RING_BYTES


def test_log_ring_is_sized_by_the_configuration():
    class Sink:
        def write(self, s):
            pass

    before = (compat.log.hostname, compat.log.threshold, compat.log.stream)
    try:
        compat.configure_logging("relay.test", "info", Sink(), ring_bytes=0)
        compat.log.log("info", "qmgr", "kept nowhere")
        assert compat.log.ring.lines(5) == []           # log_ring = 0: no ring
        compat.configure_logging("relay.test", "info", Sink(), ring_bytes=1024)
        for n in range(40):
            compat.log.log("info", "qmgr", "line %d" % n)
        kept = compat.log.ring.lines(40)
        assert len(compat.log.ring.buf) == 1024 and 5 < len(kept) < 40
        assert kept[-1].endswith("line 39")
    finally:
        compat.configure_logging(before[0], "info", before[2], ring_bytes=logring.RING_BYTES)
        compat.log.threshold = before[1]


def test_log_program_names_are_postfix_ones():
    names = [compat.program_name(m) for m in ("smtps", "smtpc", "spool", "qmgr", "mcp",
                                             "sendmail", "bounce", "smar")]
    assert names == ["smtpd", "smtp", "qmgr", "qmgr", "master", "pickup", "bounce", "smar"]


def test_tls_failures_are_connection_errors():
    eof = OSError(-29312, "MBEDTLS_ERR_SSL_CONN_EOF")     # MicroPython's mbedtls
    assert compat.is_tls_error(eof) and compat.is_connection_error(eof)
    assert not compat.is_tls_error(OSError(2, "ENOENT"))

# The scheduler with a backlog on the MicroPython unix port (issue 11): a daemon
# started with BACKLOG messages all due at once (far more than one delivery batch,
# and than the SCAN_LIMIT due messages one pass examines) must drain them to an
# aiosmtpd next hop at HEAP, and its scheduler must never fail. The spool is written
# on CPython with the Spool API. Measured (BENCHMARKS.md): before the scan walked the
# index's queue IDs and the tables grew their buckets, the scheduler met MemoryError
# at 960K with 2,000 due and the drain stalled at 905; after, 2,000 of 2,000 at 960K
# (832K drains too, with delivery retries). Polls with deadlines; no timed assertions.
import time

import pytest
from helpers.backlog import fill_spool
from helpers.daemon import Daemon, config_text, free_port
from helpers.nexthop import NextHop

BACKLOG = 2000
HEAP = "960K"
STALL_S = 60                    # the drain fails after this long without a delivery


@pytest.mark.parametrize("runtime", ["micropython"])
def test_a_backlog_of_due_messages_drains_at_a_small_heap(runtime, tmp_path):
    spool = str(tmp_path / "spool")
    fill_spool(spool, BACKLOG)
    with NextHop("127.0.0.1") as hop:
        port = free_port()
        text = config_text(spool, port, top_extra=(
            'qmgr { max_messages = 5000; max_queue_size = 100M; retry_min = 1s; retry_max = 2s; }\n'
            'smtpc { tls = off; }\nsmar { route "*" { via = "[127.0.0.1]:%d"; tls = off; } }'
            % hop.port))
        daemon = Daemon(runtime, tmp_path, text, port, heap=HEAP).start()
        try:
            seen, last = 0, time.time()
            while len(hop.messages) < BACKLOG and time.time() - last < STALL_S:
                time.sleep(0.5)
                if len(hop.messages) != seen:
                    seen, last = len(hop.messages), time.time()
        finally:
            daemon.stop()
        log = daemon.log()
        delivered = set(m.rcpt_tos[0] for m in hop.messages)
    assert "scheduler:" not in log, [line for line in log.splitlines() if "scheduler:" in line][:3]
    assert len(delivered) == BACKLOG, "%d of %d delivered\n%s" % (len(delivered), BACKLOG, log[-3000:])

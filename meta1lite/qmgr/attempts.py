# meta1lite.qmgr.attempts - what one delivery attempt's results do: the status log
# lines, expiry after max_queue_lifetime, bounces (bounce.py), the durable record
# in the spool, the next retry, and what alias expansion turns a recipient into.
#
# Owns: turning smtpc's per-recipient Results (or a DNS failure) into spool state
# records and log lines, and alias fan-out (a new message for recipients that
# expand to several addresses). Must never: hold a message body (it is streamed
# from the spool to the new message), bounce a null-sender message to its sender,
# or record a bounce whose DSN could not be queued (that recipient stays deferred),
# or send a message again because its outcome could not be recorded (a full file
# system): the outcome waits in `unrecorded` and the next try records it (record_again).
# Shared code: MicroPython and CPython.
from meta1lite import compat, status
from meta1lite.const import const
from meta1lite.smar import dnsbase
from meta1lite.smtpc import NO_RELAY, Result

asyncio = compat.asyncio
SANE_EPOCH = const(1735689600)  # 2025-01-01: wall times before this are "unknown" (rp2 boots at 2021)
LOG = const("qmgr")
LOG_SMTPC = const("smtpc")


def sane(wall):
    """True if a wall-clock time can be believed (after SANE_EPOCH)."""
    return wall is not None and wall >= SANE_EPOCH


def backoff(attempts, retry_min, retry_max, rand=None):
    """Seconds until the next try after `attempts` tries: doubling from retry_min,
    jittered by -12.5%..+12.5%, always within [retry_min, retry_max]."""
    base = retry_min
    for _ in range(max(0, attempts - 1)):
        if base >= retry_max:
            break
        base *= 2
    if rand is None:
        rand = compat.urandom(1)[0] / 255
    delay = int(base * (0.875 + rand / 4))
    return max(retry_min, min(retry_max, delay))


def fmt_delay(seconds):
    """Postfix-style delay figure: '0', '0.42', '3.1', '27'."""
    if seconds < 0.01:
        return "0"
    if seconds < 10:
        return ("%.2f" % seconds).rstrip("0").rstrip(".")
    return "%d" % seconds


def dns_failure(exc, jobs):
    """{queue_id: [Result]} for jobs whose destination could not be looked up."""
    if isinstance(exc, dnsbase.NullMX):
        reply = (556, "5.1.10", "Recipient address has null MX: %s" % exc)
    elif isinstance(exc, dnsbase.PermanentDNSError):
        reply = (550, "5.1.2", "Host or domain name not found: %s" % exc)
    else:
        reply = (451, "4.4.3", "Host or domain name lookup failed: %s" % exc)
    verdict = status.BOUNCED if reply[0] >= 500 else status.DEFERRED
    out = {}
    for job in jobs:
        out[job.queue_id] = [Result(i, verdict, reply[0], reply[1], reply[2], NO_RELAY)
                             for i, _ in job.rcpts]
    return out


class Attempts:
    """Records attempts for the queue manager; wake(queue_id) tells it of new mail."""

    def __init__(self, cfg, spool, wake):
        self.spool = spool
        self.wake = wake
        self.reload(cfg)
        self.counts = {status.SENT: 0, status.DEFERRED: 0, status.BOUNCED: 0, "dsn": 0}
        self.unrecorded = {}    # queue id -> records an attempt could not write (disk full)

    def reload(self, cfg):
        """Take a (new) configuration: retries, lifetime, bounce addresses."""
        q = cfg["qmgr"]
        self.cfg = cfg
        self.retry_min, self.retry_max = q["retry_min"], max(q["retry_min"], q["retry_max"])
        self.lifetime = q["max_queue_lifetime"]

    def backoff(self, attempts):
        """Seconds until the next try after `attempts` tries."""
        return backoff(attempts, self.retry_min, self.retry_max)

    async def settle(self, job, results, started, born):
        """Record the Results of one job; returns the retry delay (None: gone)."""
        msg = self.spool.get(job.queue_id)
        if msg is None:
            return None
        by_index = {}
        for res in results:
            by_index[res.index] = res
        addrs = {}
        for index, addr in job.rcpts:
            addrs[index] = addr
            if index not in by_index:
                by_index[index] = Result(index, status.DEFERRED, 451, "4.3.0",
                                         "no result from smtpc", NO_RELAY)
        return await self.record(msg, [by_index[i] for i in by_index], addrs, started, born)

    async def record(self, msg, outcomes, addrs, started, born):
        """Log, bounce and record the outcomes of one attempt at one message;
        returns the delay before its next try."""
        now = compat.monotonic()
        self._expire(outcomes, now - born >= self.lifetime)
        failed = [res for res in outcomes if res.status == status.BOUNCED]
        if failed and not await self._bounce(msg, failed, addrs):
            for res in failed:
                res.status = status.DEFERRED
        delay = self.backoff(self._attempts(msg, outcomes))
        wall = compat.wall_time()
        next_wall = int(wall + delay) if sane(wall) else None
        records = []
        for res in outcomes:
            self._log_status(msg, res, addrs.get(res.index), started, now, born)
            self.counts[res.status] = self.counts.get(res.status, 0) + 1
            retry = next_wall if res.status == status.DEFERRED else None
            records.append((res.index, res.status, str(res.text), retry))
        await self._write(msg.id, records)
        return delay

    async def _write(self, queue_id, records):
        try:
            await self.spool.record_attempt(queue_id, records)
        except OSError as exc:
            self.unrecorded[queue_id] = records
            compat.log.log("error", LOG, "%s: cannot record the delivery (%r); recorded at the "
                           "next try, not sent again" % (queue_id, exc))
            return
        if not self.spool.exists(queue_id):
            compat.log.log("info", LOG, "%s: removed" % queue_id)

    async def record_again(self, queue_id):
        """Write the outcome an earlier attempt could not record (no delivery);
        returns the delay before the next try if it still cannot."""
        records = self.unrecorded.pop(queue_id, None)
        if records is not None:
            await self._write(queue_id, records)
        return self.retry_min if queue_id in self.unrecorded else None

    def _expire(self, outcomes, expired):
        for res in outcomes:
            if res.status == status.DEFERRED and expired:
                res.status, res.enhanced = status.BOUNCED, "4.4.7"
                res.text = "message expired in the queue; last error: %s" % res.text

    def _attempts(self, msg, outcomes):
        attempts = 1
        for res in outcomes:
            attempts = max(attempts, msg.recipients[res.index].attempts + 1)
        return attempts

    def _log_status(self, msg, res, addr, started, now, born):
        waited = max(0, started - born)
        text = " ".join(str(res.text).split())
        compat.log.log("info", LOG_SMTPC, "%s: to=<%s>, relay=%s, delay=%s, delays=0/%s/0/%s, "
                       "dsn=%s, status=%s (%s)" % (
                           msg.id, addr or msg.recipients[res.index].addr, res.relay or NO_RELAY,
                           fmt_delay(max(0, now - born)), fmt_delay(waited),
                           fmt_delay(max(0, now - started)), res.enhanced, res.status, text))

    # --- bounces and alias expansion ------------------------------------------------------

    async def _bounce(self, msg, failed, addrs):
        """Queue one DSN for these failures; False if it could not be queued."""
        try:
            from meta1lite.qmgr import bounce  # only when bouncing: not in a board's idle heap
            target = bounce.recipient_for(self.cfg, msg, [addrs.get(r.index) or msg.recipients[r.index].addr
                                                          for r in failed])
            if target is None:
                compat.log.log("info", LOG, "%s: from=<%s>, undeliverable notification discarded "
                               "(null sender)" % (msg.id, msg.sender))
                return True
            dsn_id = await bounce.queue_dsn(self.cfg, self.spool, msg, failed, addrs, target)
        except Exception as exc:  # noqa: BLE001 - SpoolFull, OSError, MemoryError (the import's too): retry later
            compat.log.log("warning", LOG, "%s: cannot queue the delivery status notification: %s"
                           % (msg.id, exc))
            return False
        self.counts["dsn"] += 1
        compat.log.log("info", "bounce", "%s: %s non-delivery notification: %s" % (msg.id, target[1], dsn_id))
        self.wake(dsn_id)
        return True

    async def expand(self, msg, special, born):
        """Recipients that expand to several addresses go to a new message; unknown
        local addresses bounce (5.1.1). special: [(index, [addresses])]."""
        outcomes, fanout = [], []
        for index, expanded in special:
            if expanded:
                fanout.append((index, expanded))
            else:
                outcomes.append(Result(index, status.BOUNCED, 550, "5.1.1", "unknown local address <%s>"
                                       % msg.recipients[index].addr, NO_RELAY))
        if fanout:
            new_id = await self._fan_out(msg, fanout)
            for index, expanded in fanout:
                outcomes.append(Result(index, status.SENT, 250, "2.0.0", "expanded to %d addresses in %s"
                                       % (len(expanded), new_id), NO_RELAY))
        await self.record(msg, outcomes, {}, compat.monotonic(), born)

    async def _fan_out(self, msg, fanout):
        rcpts = []
        for _, expanded in fanout:
            for addr in expanded:
                if addr not in rcpts:
                    rcpts.append(addr)
        writer = self.spool.new_message()
        body = None
        try:
            body = self.spool.read_body(msg.id)
            for chunk in body:
                writer.write(chunk)
                await asyncio.sleep(0)
            info = dict(msg.info or {})
            info["expanded"] = msg.id
            new_id = await self.spool.commit(writer, msg.sender, rcpts, info)
        except BaseException:       # unreadable body, cancelled (a BaseException on both)
            writer.abort()
            raise
        finally:
            if body is not None:
                body.close()        # cut short: MicroPython never closes it by itself
        compat.log.log("info", LOG, "%s: alias expansion queued as %s (%d recipients)" % (
            msg.id, new_id, len(rcpts)))
        self.wake(new_id)
        return new_id

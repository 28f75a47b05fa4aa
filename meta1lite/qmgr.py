# meta1lite.qmgr - the queue manager: the flow of mail from the spool to smtpc.
#
# Owns: the schedule (which message is due when, on the monotonic clock), grouping
# due recipients into deliveries per destination, the concurrency bounds (per
# destination and global), retries with jittered exponential backoff, the queue
# lifetime, alias expansion at first delivery, recording every attempt in the spool,
# the status log lines, and handing permanent failures to bounce.py.
# Must never: hold a message body or a copy of a Message (the index holds IDs and
# times only), let one destination's outage stall another (every delivery is its
# own task), bounce a null-sender message to its sender, or trust a wall clock
# before SANE_EPOCH (a board that boots at 1970 must neither expire nor storm).
# Shared code: MicroPython and CPython.
from meta1lite import bounce, compat, dnsresolve
from meta1lite.bucketmap import BucketMap
from meta1lite.smtpc import Job, Result

asyncio = compat.asyncio
SANE_EPOCH = 1577836800         # 2020-01-01: wall times before this are "unknown"
BATCH = 20                      # messages per delivery (one connection, reused)
SCAN_LIMIT = 400                # due messages examined per scheduling pass
MAX_WAIT_S = 86400              # longest idle sleep of the scheduler (simulated s)
RECOVER_S = 5                   # pause after a scheduler error (e.g. out of memory)
PENDING = ("queued", "deferred")
LOG = "qmgr"
LOG_SMTPC = "smtpc"


def sane(wall):
    """True if a wall-clock time can be believed (after SANE_EPOCH)."""
    return wall is not None and wall >= SANE_EPOCH


def age_at(arrival, wall_now):
    """Seconds a message has been queued judged by wall clocks; 0 when unknown."""
    if not (sane(arrival) and sane(wall_now)):
        return 0
    return max(0, int(wall_now - arrival))


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


def _batch_room(plan):
    for dest in plan:
        entry = plan[dest]
        if len(entry[2]) < entry[3] * BATCH:
            return True
    return False


def _is_unknown(exc):
    return type(exc).__name__ == "UnknownAddress"


class QueueManager:
    """Schedules deliveries of the spool's messages through smar and smtpc."""

    def __init__(self, cfg, spool, smar=None, smtpc=None):
        self.cfg = cfg
        self.spool = spool
        if smar is None:
            from meta1lite.smar import AddressResolver
            smar = AddressResolver(cfg)
        if smtpc is None:
            from meta1lite.smtpc import SmtpClient
            smtpc = SmtpClient(cfg)
        self.smar = smar
        self.smtpc = smtpc
        q, c = cfg["qmgr"], cfg["smtpc"]
        self.retry_min, self.retry_max = q["retry_min"], max(q["retry_min"], q["retry_max"])
        self.lifetime = q["max_queue_lifetime"]
        self.max_connections = c["max_connections"]
        self.max_per_destination = c["max_per_destination"]
        self._due = BucketMap()     # queue id -> monotonic second it is due
        self._born = BucketMap()    # queue id -> monotonic second it arrived (may be < 0)
        self._busy = BucketMap()    # queue id -> deliveries running
        self._dests = {}        # destination key -> deliveries running
        self._tasks = {}        # number -> running delivery task
        self._task_no = 0
        self._active = 0
        self._hint = BucketMap()    # queue id -> its one destination key, when it has one
        self._arrived = []      # queue ids committed since the last pass
        self._rescan = True
        self._stopping = False
        self._event = asyncio.Event()
        self.counts = {"sent": 0, "deferred": 0, "bounced": 0, "dsn": 0}

    # --- public control ---------------------------------------------------------

    def wake(self, queue_id=None):
        """New mail in the spool: `queue_id`, or anything (None: rescan the spool)."""
        if queue_id is None:
            self._rescan = True
        else:
            self._arrived.append(queue_id)
        self._event.set()

    def flush(self):
        """Make every deferred (not held) message due now; returns how many."""
        now = self._now()
        n = 0
        for queue_id in self._due:
            if self._due[queue_id] > now:
                self._due[queue_id] = now
                n += 1
        self.wake()
        return n

    def release(self, queue_id):
        """A message left hold: try it now."""
        if queue_id in self._due:
            self._due[queue_id] = self._now()
        self.wake()

    def status(self):
        """A small dict for `meta1lite status`."""
        held = deferred = 0
        for msg in self.spool.messages():
            if msg.held:
                held += 1
            elif self._attempted(msg):
                deferred += 1
        return {"messages": len(self._due), "deferred": deferred, "held": held,
                "deliveries": self._active, "destinations": len(self._dests),
                "counts": self.counts}

    async def stop(self):
        """Stop scheduling and cancel running deliveries (their mail stays queued)."""
        self._stopping = True
        self._event.set()
        for task in list(self._tasks.values()):
            task.cancel()
        for _ in range(50):
            if not self._tasks:
                break
            await asyncio.sleep(0.01)

    async def run(self):
        """The scheduler: load the spool's index, then deliver what is due."""
        self._rescan = True
        while not self._stopping:
            self._event.clear()
            try:
                if self._rescan:
                    self._scan()
                self._take_arrivals()
                wait = self._pass()
            except Exception as exc:  # noqa: BLE001 - the scheduler must never die silently
                compat.log.log("error", LOG, "scheduler: %r; retrying in %ds" % (exc, RECOVER_S))
                self._rescan = True
                wait = RECOVER_S
            await self._wait(wait)

    # --- the index -----------------------------------------------------------------

    def _now(self):
        return int(compat.monotonic())

    def _attempted(self, msg):
        for rcpt in msg.recipients:
            if rcpt.attempts and rcpt.status in PENDING:
                return True
        return False

    def _scan(self):
        self._rescan = False
        seen = set()
        for msg in self.spool.messages():
            seen.add(msg.id)
            if msg.id not in self._due:
                self._track(msg)
        for queue_id in self._due:         # BucketMap iterates over a snapshot per bucket
            if queue_id not in seen and not self._busy.get(queue_id):
                self._forget(queue_id)

    def _take_arrivals(self):
        arrived, self._arrived = self._arrived, []
        for queue_id in arrived:
            msg = self.spool.get(queue_id)
            if msg is not None and queue_id not in self._due:
                self._track(msg)

    def _track(self, msg):
        now = self._now()
        wall = compat.wall_time()
        self._born[msg.id] = now - age_at(msg.arrival, wall)
        next_try = None
        for rcpt in msg.recipients:
            if rcpt.status in PENDING and rcpt.next_try is not None:
                next_try = rcpt.next_try if next_try is None else min(next_try, rcpt.next_try)
        if not self._attempted(msg):
            self._due[msg.id] = now
        elif sane(wall) and sane(next_try):
            self._due[msg.id] = now + max(0, min(self.retry_max, int(next_try - wall)))
        else:   # wall clock unknown: spread the retries over retry_min, never a storm
            self._due[msg.id] = now + compat.urandom(2)[0] * self.retry_min // 256

    def _forget(self, queue_id):
        self._due.pop(queue_id, None)
        self._hint.pop(queue_id, None)
        self._born.pop(queue_id, None)
        self._busy.pop(queue_id, None)

    async def _wait(self, seconds):
        if seconds is None:
            await self._event.wait()
            return
        try:
            await compat.wait_for(self._event.wait(), seconds)
        except compat.TIMEOUT_ERRORS:
            pass

    # --- planning deliveries ---------------------------------------------------------

    def _pass(self):
        """Plan and launch what is due; returns how long to sleep (None: until woken).
        One walk over the table serves both, with no list of every queue id."""
        now = self._now()
        plan = {}
        state = [self.max_connections - self._active]     # global slots left
        full = set()            # destinations with no room left in this pass
        examined, soonest = 0, None
        for queue_id, due in self._due.items():
            if state[0] <= 0 and not _batch_room(plan) or examined > SCAN_LIMIT:
                self._launch(plan)
                return None if state[0] <= 0 else 1     # a finished delivery wakes us
            if queue_id in self._busy:
                continue
            if due > now:
                soonest = due if soonest is None or due < soonest else soonest
                continue
            if self._hint.get(queue_id) in full or self.spool.is_held(queue_id):
                continue
            msg = self.spool.get(queue_id)
            if msg is None:
                self._forget(queue_id)
                continue
            examined += 1
            self._plan_message(msg, plan, state, full)
        self._launch(plan)
        return None if soonest is None else max(1, min(MAX_WAIT_S, soonest - now))

    def _plan_message(self, msg, plan, state, full):
        groups, special = self._groups(msg)
        if special:
            self._start(self._prepare(msg, special), None, [msg.id])
            return
        self._hint[msg.id] = next(iter(groups)) if len(groups) == 1 else None
        for dest in groups:
            if not self._room(plan.get(dest), dest, state):
                full.add(dest)
                return
        for dest in groups:
            route, domain, rcpts = groups[dest]
            entry = plan.get(dest)
            if entry is None:
                entry = plan[dest] = [route, domain, [], 0]
            if len(entry[2]) >= entry[3]:       # spread over connections first
                self._grow(entry, dest, state)
            entry[2].append(self._job(msg, rcpts))

    def _room(self, entry, dest, state):
        if entry is not None and len(entry[2]) < entry[3] * BATCH:
            return True
        used = self._dests.get(dest, 0) + (entry[3] if entry else 0)
        return used < self.max_per_destination and state[0] > 0

    def _grow(self, entry, dest, state):
        if self._dests.get(dest, 0) + entry[3] < self.max_per_destination and state[0] > 0:
            entry[3] += 1
            state[0] -= 1

    def _groups(self, msg):
        """{destination: (route, domain, [(index, address)])} of the pending
        recipients, and a list of recipients needing expansion or a bounce."""
        groups = {}
        special = []
        expand = not (msg.info and msg.info.get("expanded"))
        for index, rcpt in enumerate(msg.recipients):
            if rcpt.status not in PENDING:
                continue
            addr = rcpt.addr
            if expand:
                try:
                    addrs = self.smar.expand(addr)
                except Exception as exc:  # noqa: BLE001 - smar.UnknownAddress
                    if not _is_unknown(exc):
                        raise
                    addrs = []
                if len(addrs) != 1:
                    special.append((index, addrs))
                    continue
                addr = addrs[0]
            route = self.smar.route(msg.sender, addr)
            domain = addr.rpartition("@")[2].lower()
            dest = route.key        # via mx: "mx:DOMAIN", one destination per domain
            if dest not in groups:
                groups[dest] = (route, domain, [])
            groups[dest][2].append((index, addr))
        return groups, special

    def _job(self, msg, rcpts):
        spool, queue_id = self.spool, msg.id
        info = msg.info or {}
        return Job(queue_id, msg.sender, rcpts, msg.size, bool(info.get("eightbit")),
                   lambda: spool.read_body(queue_id))

    def _launch(self, plan):
        for dest in plan:
            route, domain, jobs, slots = plan[dest]
            if not jobs:
                continue
            slots = max(1, min(slots, len(jobs)))
            for k in range(slots):
                part = jobs[k::slots]
                self._start(self._deliver(route, domain, part), dest, [j.queue_id for j in part])

    def _start(self, coro, dest, ids):
        self._task_no += 1
        number = self._task_no
        self._active += 1
        if dest is not None:
            self._dests[dest] = self._dests.get(dest, 0) + 1
        for queue_id in ids:
            self._busy[queue_id] = self._busy.get(queue_id, 0) + 1
        self._tasks[number] = asyncio.create_task(self._guard(coro, number, dest, ids))

    async def _guard(self, coro, number, dest, ids):
        try:
            await coro
        except Exception as exc:  # noqa: BLE001 - a delivery bug must not stop the queue
            compat.log.log("error", LOG, "%s: delivery failed: %r" % (",".join(ids), exc))
            for queue_id in ids:
                self._defer_later(queue_id, 1)
        finally:
            self._tasks.pop(number, None)
            self._active -= 1
            if dest is not None:
                self._dests[dest] -= 1
                if not self._dests[dest]:
                    del self._dests[dest]
            for queue_id in ids:
                self._busy[queue_id] = self._busy.get(queue_id, 1) - 1
                if self._busy[queue_id] <= 0:
                    self._busy.pop(queue_id, None)
                    if not self.spool.exists(queue_id):
                        self._forget(queue_id)
            self._event.set()

    def _defer_later(self, queue_id, attempts):
        if queue_id in self._due:
            self._due[queue_id] = max(self._due[queue_id], self._now() + backoff(
                attempts, self.retry_min, self.retry_max))

    # --- running one delivery ------------------------------------------------------------

    async def _deliver(self, route, domain, jobs):
        started = compat.monotonic()
        try:
            hops = await self.smar.next_hops(route, domain)
            results = await self.smtpc.deliver(route, hops, jobs)
        except dnsresolve.DNSLookupError as exc:
            results = self._dns_failure(exc, jobs)
        for job in jobs:
            await self._settle(job, results.get(job.queue_id) or [], started)

    def _dns_failure(self, exc, jobs):
        if isinstance(exc, dnsresolve.NullMX):
            reply = (556, "5.1.10", "Recipient address has null MX: %s" % exc)
        elif isinstance(exc, dnsresolve.PermanentDNSError):
            reply = (550, "5.1.2", "Host or domain name not found: %s" % exc)
        else:
            reply = (451, "4.4.3", "Host or domain name lookup failed: %s" % exc)
        status = "bounced" if reply[0] >= 500 else "deferred"
        out = {}
        for job in jobs:
            out[job.queue_id] = [Result(i, status, reply[0], reply[1], reply[2], "none")
                                 for i, _ in job.rcpts]
        return out

    async def _settle(self, job, results, started):
        msg = self.spool.get(job.queue_id)
        if msg is None:
            return
        by_index = {}
        for res in results:
            by_index[res.index] = res
        addrs = {}
        for index, addr in job.rcpts:
            addrs[index] = addr
            if index not in by_index:
                by_index[index] = Result(index, "deferred", 451, "4.3.0", "no result from smtpc", "none")
        await self._record(msg, [by_index[i] for i in by_index], addrs, started)

    async def _record(self, msg, outcomes, addrs, started):
        """Log, bounce and record the outcomes of one attempt at one message."""
        now = compat.monotonic()
        expired = now - self._born.get(msg.id, int(now)) >= self.lifetime
        attempts = 1
        for res in outcomes:
            attempts = max(attempts, msg.recipients[res.index].attempts + 1)
            if res.status == "deferred" and expired:
                res.status, res.enhanced = "bounced", "4.4.7"
                res.text = "message expired in the queue; last error: %s" % res.text
        failed = [res for res in outcomes if res.status == "bounced"]
        if failed and not await self._bounce(msg, failed, addrs):
            for res in failed:
                res.status = "deferred"
        delay = backoff(attempts, self.retry_min, self.retry_max)
        wall = compat.wall_time()
        next_wall = int(wall + delay) if sane(wall) else None
        records = []
        for res in outcomes:
            self._log_status(msg, res, addrs.get(res.index), started, now)
            self.counts[res.status] = self.counts.get(res.status, 0) + 1
            reply = str(res.text)
            records.append((res.index, res.status, reply, next_wall if res.status == "deferred" else None))
        await self.spool.record_attempt(msg.id, records)
        if not self.spool.exists(msg.id):
            compat.log.log("info", LOG, "%s: removed" % msg.id)
        elif msg.id in self._due:
            self._due[msg.id] = max(self._due[msg.id], self._now() + delay)

    def _log_status(self, msg, res, addr, started, now):
        born = self._born.get(msg.id, int(started))
        waited = max(0, started - born)
        text = " ".join(str(res.text).split())
        compat.log.log("info", LOG_SMTPC, "%s: to=<%s>, relay=%s, delay=%s, delays=0/%s/0/%s, "
                       "dsn=%s, status=%s (%s)" % (
                           msg.id, addr or msg.recipients[res.index].addr, res.relay or "none",
                           fmt_delay(max(0, now - born)), fmt_delay(waited),
                           fmt_delay(max(0, now - started)), res.enhanced, res.status, text))

    # --- bounces and alias expansion ------------------------------------------------------

    async def _bounce(self, msg, failed, addrs):
        """Queue one DSN for these failures; False if it could not be queued."""
        target = bounce.recipient_for(self.cfg, msg, [addrs.get(r.index) or msg.recipients[r.index].addr
                                                      for r in failed])
        if target is None:
            compat.log.log("info", LOG, "%s: from=<%s>, undeliverable notification discarded "
                           "(null sender)" % (msg.id, msg.sender))
            return True
        try:
            dsn_id = await bounce.queue_dsn(self.cfg, self.spool, msg, failed, addrs, target)
        except Exception as exc:  # noqa: BLE001 - SpoolFull or OSError: retry later
            compat.log.log("warning", LOG, "%s: cannot queue the delivery status notification: %s"
                           % (msg.id, exc))
            return False
        self.counts["dsn"] += 1
        compat.log.log("info", "bounce", "%s: %s non-delivery notification: %s" % (msg.id, target[1], dsn_id))
        self.wake(dsn_id)
        return True

    async def _prepare(self, msg, special):
        """Recipients that expand to several addresses go to a new message; unknown
        local addresses bounce (5.1.1)."""
        outcomes, addrs, fanout = [], {}, []
        for index, expanded in special:
            if expanded:
                fanout.append((index, expanded))
            else:
                outcomes.append(Result(index, "bounced", 550, "5.1.1", "unknown local address <%s>"
                                       % msg.recipients[index].addr, "none"))
        if fanout:
            new_id = await self._fan_out(msg, fanout)
            for index, expanded in fanout:
                outcomes.append(Result(index, "sent", 250, "2.0.0", "expanded to %d addresses in %s"
                                       % (len(expanded), new_id), "none"))
        await self._record(msg, outcomes, addrs, compat.monotonic())
        if msg.id in self._due:
            self._due[msg.id] = self._now()

    async def _fan_out(self, msg, fanout):
        rcpts = []
        for _, expanded in fanout:
            for addr in expanded:
                if addr not in rcpts:
                    rcpts.append(addr)
        writer = self.spool.new_message()
        for chunk in self.spool.read_body(msg.id):
            writer.write(chunk)
            await asyncio.sleep(0)
        info = dict(msg.info or {})
        info["expanded"] = msg.id
        new_id = await self.spool.commit(writer, msg.sender, rcpts, info)
        compat.log.log("info", LOG, "%s: alias expansion queued as %s (%d recipients)" % (
            msg.id, new_id, len(rcpts)))
        self.wake(new_id)
        return new_id

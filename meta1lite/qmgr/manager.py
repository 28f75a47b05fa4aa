# meta1lite.qmgr.manager - the queue manager (MeTA1's qmgr): the flow of mail from
# the spool to smtpc.
#
# Owns: the schedule (which message is due when, on the monotonic clock), grouping
# due recipients into deliveries per destination, the concurrency bounds (per
# destination and global), launching each delivery as its own task, and when a
# message is tried next (attempts.py records what an attempt did).
# Must never: hold a message body or a copy of a Message (the index holds IDs and
# times only), let one destination's outage stall another (every delivery is its
# own task), or trust a wall clock before SANE_EPOCH (a board that boots at 1970
# must neither expire nor storm).
# Shared code: MicroPython and CPython.
from meta1lite import compat, status
from meta1lite.const import const
from meta1lite.qmgr.attempts import SANE_EPOCH, Attempts, backoff, dns_failure, fmt_delay, sane  # noqa: F401
from meta1lite.qmgr.bucketmap import BucketMap
from meta1lite.smar import dnsbase
from meta1lite.smar.aliases import UnknownAddress
from meta1lite.smtpc import Job

asyncio = compat.asyncio
BATCH = const(20)               # messages per delivery (one connection, reused)
SCAN_LIMIT = const(400)         # due messages examined per scheduling pass
_KEPT_BUILT = const(4)          # arrivals whose Message the next pass reuses
_MAX_WAIT_S = const(86400)      # longest idle sleep of the scheduler (simulated s)
RECOVER_S = 5                   # pause after a scheduler error (e.g. out of memory)
LOG = const("qmgr")


def age_at(arrival, wall_now):
    """Seconds a message has been queued judged by wall clocks; 0 when unknown."""
    if not (sane(arrival) and sane(wall_now)):
        return 0
    return max(0, int(wall_now - arrival))


class _Planned:
    """The deliveries planned for one destination in one pass."""

    def __init__(self, route, domain):
        self.route = route
        self.domain = domain
        self.jobs = []
        self.slots = 0          # connections it will use

    def has_room(self):
        """True while its connections can carry another message."""
        return len(self.jobs) < self.slots * BATCH


def _earlier(a, b):
    return b if a is None or (b is not None and b < a) else a


def _batch_room(plan):
    for dest in plan:
        if plan[dest].has_room():
            return True
    return False


class QueueManager:
    """Schedules deliveries of the spool's messages through smar and smtpc."""

    def __init__(self, cfg, spool, smar=None, smtpc=None):
        self.spool = spool
        if smar is None:
            from meta1lite.smar.resolver import AddressResolver
            smar = AddressResolver(cfg)
        if smtpc is None:
            from meta1lite.smtpc import SmtpClient
            smtpc = SmtpClient(cfg)
        self.smar = smar
        self.smtpc = smtpc
        self._limits(cfg)
        self._due = BucketMap()     # queue id -> monotonic second it is due
        self._born = BucketMap()    # queue id -> monotonic second it arrived (may be < 0)
        self._busy = BucketMap()    # queue id -> deliveries running
        self._dests = {}        # destination key -> deliveries running
        self._tasks = {}        # number -> running delivery task
        self._task_no = 0
        self._failures = 0      # deliveries failed in a row (an exception, not a reply)
        self._active = 0
        self._hint = BucketMap()    # queue id -> its one destination key, when it has one
        self._arrived = []      # queue ids committed since the last pass
        self._rescan = True
        self._walk = True       # the next pass walks the whole table (see _pass)
        self._soonest = None    # when the earliest deferred message is due (last walk)
        self._stopping = False
        self._event = asyncio.Event()
        self.attempts = Attempts(cfg, spool, self.wake)
        self.counts = self.attempts.counts

    def _limits(self, cfg):
        q, c = cfg["qmgr"], cfg["smtpc"]
        self.cfg = cfg
        self.retry_min = q["retry_min"]
        self.retry_max = max(q["retry_min"], q["retry_max"])
        self.max_connections = c["max_connections"]
        self.max_per_destination = c["max_per_destination"]

    # --- public control ---------------------------------------------------------

    def reload(self, cfg):
        """Take a new configuration (retries, lifetime, concurrency); the schedule
        is kept and the spool rescanned."""
        self._limits(cfg)
        self.attempts.reload(cfg)
        self.wake()

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
                    self._walk = True
                arrived = self._take_arrivals()
                wait = self._pass(arrived)
            except Exception as exc:  # noqa: BLE001 - the scheduler must never die silently
                compat.log.log("error", LOG, "scheduler: %r; retrying in %ds" % (exc, RECOVER_S))
                self._rescan = True
                await compat.sleep(RECOVER_S)   # new mail must not cut this short: no spinning
                continue
            await self._wait(wait)

    # --- the index -----------------------------------------------------------------

    def _now(self):
        return int(compat.monotonic())

    def _attempted(self, msg):
        for rcpt in msg.recipients:
            if rcpt.attempts and rcpt.status in status.PENDING:
                return True
        return False

    def _scan(self):
        # no set of every queue ID: its table is one block that grows with the queue,
        # which a fragmented MicroPython heap lacks (1,000 messages: MemoryError below 3.2M);
        # nor the ordered listing (an int per message): only an untracked message is
        # built, one at a time, and its key is the index's queue ID string
        self._rescan = False
        for queue_id in self.spool.queue_ids():
            if queue_id not in self._due:
                msg = self.spool.get(queue_id)
                if msg is not None:
                    self._track(queue_id, msg)
                else:
                    self._unreadable(queue_id)
        for queue_id in self._due:         # BucketMap iterates over a snapshot per bucket
            if not self.spool.exists(queue_id) and not self._busy.get(queue_id):
                self._forget(queue_id)

    def _take_arrivals(self):
        # (queue id, Message or None) of those tracked now, for the pass that follows:
        # the first _KEPT_BUILT keep their Message (no second build), the others are
        # built again one at a time (a burst must not hold many on a board's heap)
        arrived, self._arrived = self._arrived, []
        tracked = []
        for queue_id in arrived:
            if queue_id in self._due:
                continue
            msg = self.spool.get(queue_id)
            if msg is None:
                if self._unreadable(queue_id) is not None:
                    self._walk = True       # the pass that follows sees its due time
                continue
            self._track(queue_id, msg)
            tracked.append((queue_id, msg if len(tracked) < _KEPT_BUILT else None))
        return tracked

    def _track(self, queue_id, msg):
        # queue_id: the one string every table of this message is keyed by
        now = self._now()
        wall = compat.wall_time()
        self._note_born(queue_id, msg, now, wall)
        next_try = None
        for rcpt in msg.recipients:
            if rcpt.status in status.PENDING and rcpt.next_try is not None:
                next_try = rcpt.next_try if next_try is None else min(next_try, rcpt.next_try)
        if not self._attempted(msg):
            self._due[queue_id] = now
        elif sane(wall) and sane(next_try):
            self._due[queue_id] = now + max(0, min(self.retry_max, int(next_try - wall)))
        else:   # wall clock unknown: spread the retries over retry_min, never a storm
            self._due[queue_id] = now + compat.urandom(2)[0] * self.retry_min // 256

    def _note_born(self, queue_id, msg, now, wall):
        # when the message arrived, on the monotonic clock (its lifetime counts from it)
        self._born[queue_id] = now - age_at(msg.arrival, wall)

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

    def _pass(self, arrived):
        """Plan and launch what is due; returns how long to sleep (None: until woken).
        One walk over the table serves both, with no list of every queue id. After
        a walk that saw the whole table, until a delivery ends or a deferred message
        is due, only new arrivals can be planned: the pass looks at them alone (a
        walk per arrival was most of the relay's CPU time with a queue backlog)."""
        now = self._now()
        if self._walk or (self._soonest is not None and self._soonest <= now):
            self._walk = False
            return self._plan_due(self._due.items(), now, True)
        return self._plan_due([(q, self._due.get(q), m) for q, m in arrived if q in self._due], now, False)

    def _plan_due(self, entries, now, walk):
        plan = {}
        state = [self.max_connections - self._active]     # global slots left
        full = set()            # destinations with no room left in this pass
        examined, soonest = 0, None
        for entry in entries:
            queue_id, due = entry[0], entry[1]
            if state[0] <= 0 and not _batch_room(plan) or examined > SCAN_LIMIT:
                self._launch(plan)
                self._walk = state[0] > 0 or self._walk  # cut short: walk again next time
                return None if state[0] <= 0 else 1     # a finished delivery wakes us
            if queue_id in self._busy:
                continue
            if due > now:
                soonest = due if soonest is None or due < soonest else soonest
                continue
            if self._hint.get(queue_id) in full:
                continue
            msg = entry[2] if len(entry) > 2 else None      # an arrival's, built just now
            if msg is None:
                if self.spool.is_held(queue_id):    # asked of the index: nothing built
                    continue
                msg = self.spool.get(queue_id)
            if msg is None:
                soonest = _earlier(soonest, self._unreadable(queue_id))
                continue
            if queue_id not in self._born:      # tracked while its envelope was unreadable
                self._note_born(queue_id, msg, now, compat.wall_time())
            if msg.held:
                continue
            examined += 1
            soonest = _earlier(soonest, self._plan_safely(queue_id, msg, plan, state, full))
        self._launch(plan)
        if walk:
            self._soonest = soonest
        elif soonest is not None and (self._soonest is None or soonest < self._soonest):
            self._soonest = soonest
        soonest = self._soonest
        return None if soonest is None else max(1, min(_MAX_WAIT_S, soonest - now))

    def _plan_safely(self, queue_id, msg, plan, state, full):
        # one message that cannot be planned (a bug, a board's MemoryError) is tried
        # again after retry_min (its new due time is returned); the pass goes on
        try:
            self._plan_message(queue_id, msg, plan, state, full)
            return None
        except Exception as exc:  # noqa: BLE001 - one message must not stop the queue
            compat.log.log("error", LOG, "%s: cannot plan its delivery: %r; trying again in %ds"
                           % (queue_id, exc, self.retry_min))
        due = self._due[queue_id] = self._now() + self.retry_min
        return due

    def _unreadable(self, queue_id):
        # spool.get() found no readable envelope: gone, or unreadable just now (EIO,
        # EMFILE, a board's heap). Still queued: tried again after retry_min (its due
        # time, returned), never dropped from the table while the spool holds it.
        if not self.spool.exists(queue_id):
            self._forget(queue_id)
            return None
        compat.log.log("warning", LOG, "%s: envelope unreadable now; trying again in %ds"
                       % (queue_id, self.retry_min))
        due = self._due[queue_id] = self._now() + self.retry_min
        return due

    def _plan_message(self, queue_id, msg, plan, state, full):
        # queue_id: the tables' key (msg.id is an equal string of its own)
        if queue_id in self.attempts.unrecorded:    # sent, not recorded: record, not send
            self._start(self._record_again(queue_id), None, [queue_id])
            return
        groups, special = self._groups(msg)
        if not groups and not special:     # every recipient final, no done record yet
            self._start(self._retire(queue_id), None, [queue_id])
            return
        if special:
            self._start(self._expand(msg, special), None, [queue_id])
            return
        self._hint[queue_id] = next(iter(groups)) if len(groups) == 1 else None
        for dest in groups:
            if not self._room(plan.get(dest), dest, state):
                full.add(dest)
                return
        for dest in groups:
            route, domain, rcpts = groups[dest]
            entry = plan.get(dest)
            if entry is None:
                entry = plan[dest] = _Planned(route, domain)
            if len(entry.jobs) >= entry.slots:      # spread over connections first
                self._grow(entry, dest, state)
            entry.jobs.append(self._job(queue_id, msg, rcpts))

    def _room(self, entry, dest, state):
        if entry is not None and entry.has_room():
            return True
        used = self._dests.get(dest, 0) + (entry.slots if entry else 0)
        return used < self.max_per_destination and state[0] > 0

    def _grow(self, entry, dest, state):
        if self._dests.get(dest, 0) + entry.slots < self.max_per_destination and state[0] > 0:
            entry.slots += 1
            state[0] -= 1

    def _groups(self, msg):
        """{destination: (route, domain, [(index, address)])} of the pending
        recipients, and a list of recipients needing expansion or a bounce."""
        groups = {}
        special = []
        expand = not (msg.info and msg.info.get("expanded"))
        for index, rcpt in enumerate(msg.recipients):
            if rcpt.status not in status.PENDING:
                continue
            addr = rcpt.addr
            if expand:
                try:
                    addrs = self.smar.expand(addr)
                except UnknownAddress:      # AliasError too: bounced by _expand
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

    def _job(self, queue_id, msg, rcpts):
        spool = self.spool
        info = msg.info or {}
        return Job(queue_id, msg.sender, rcpts, msg.size, bool(info.get("eightbit")),
                   lambda: spool.read_body(queue_id, True))

    def _launch(self, plan):
        for dest in plan:
            entry = plan[dest]
            jobs = entry.jobs
            slots = max(1, min(entry.slots, len(jobs)))
            for k in range(slots if jobs else 0):
                part = jobs[k::slots]
                self._start(self._deliver(entry.route, entry.domain, part), dest,
                            [j.queue_id for j in part])

    def _start(self, coro, dest, ids):
        self._task_no += 1
        number = self._task_no
        try:                        # first, or a MemoryError would leave it counted for ever
            task = asyncio.create_task(self._guard(coro, number, dest, ids))
        except BaseException:
            coro.close()
            raise
        self._active += 1
        if dest is not None:
            self._dests[dest] = self._dests.get(dest, 0) + 1
        for queue_id in ids:
            self._busy[queue_id] = self._busy.get(queue_id, 0) + 1
        self._tasks[number] = task

    async def _guard(self, coro, number, dest, ids):
        try:
            await coro
            self._failures = 0
        except Exception as exc:  # noqa: BLE001 - a delivery bug must not stop the queue
            compat.log.log("error", LOG, "%s: delivery failed: %r" % (",".join(ids), exc))
            self._failures += 1         # in a row: each waits longer (never a storm)
            for queue_id in ids:
                self._defer_later(queue_id, self._failures)
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
            self._walk = True           # its slot and its messages are free again
            self._event.set()

    def _defer_later(self, queue_id, attempts):
        if queue_id in self._due:
            self._due[queue_id] = max(self._due[queue_id],
                                      self._now() + self.attempts.backoff(attempts))

    # --- running one delivery ------------------------------------------------------------

    async def _deliver(self, route, domain, jobs):
        started = compat.monotonic()
        settled = []                # recorded as their transactions ended

        async def on_result(job, results):
            await self._settle(job, results, started)
            settled.append(job.queue_id)
        try:
            hops = await self.smar.next_hops(route, domain)
            results = await self.smtpc.deliver(route, hops, jobs, on_result)
        except dnsbase.DNSLookupError as exc:
            results = dns_failure(exc, jobs)
        for job in jobs:
            if job.queue_id not in settled:
                await self._settle(job, results.get(job.queue_id) or [], started)

    async def _settle(self, job, results, started):
        delay = await self.attempts.settle(job, results, started,
                                           self._born_at(job.queue_id, started))
        self._retry_after(job.queue_id, delay)

    def _born_at(self, queue_id, fallback):
        return self._born.get(queue_id, int(fallback))

    def _retry_after(self, queue_id, delay):
        if delay is not None and queue_id in self._due and self.spool.exists(queue_id):
            self._due[queue_id] = max(self._due[queue_id], self._now() + delay)

    async def _retire(self, queue_id):
        # a power cut (or a full disk) between a delivery's last state record and the
        # done record after it: the done record is written now
        if await self.spool.record_attempt(queue_id, []) and not self.spool.exists(queue_id):
            compat.log.log("info", LOG, "%s: removed (every recipient final)" % queue_id)

    async def _record_again(self, queue_id):
        self._retry_after(queue_id, await self.attempts.record_again(queue_id))

    async def _expand(self, msg, special):
        await self.attempts.expand(msg, special, self._born_at(msg.id, compat.monotonic()))
        if msg.id in self._due:
            self._due[msg.id] = self._now()

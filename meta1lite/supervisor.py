# meta1lite.supervisor - mcp's watch over the modules: each module is a task,
# started in dependency order; one that dies is restarted with backoff, together
# with the modules that depend on it; one watcher task does the watching, feeds
# the board's hardware watchdog and runs mcp's periodic chores.
#
# Owns: the module tasks, their restarts (_RESTART_MIN_S doubling up to
# mcp.restart_max; from _RESTART_MIN_S again once a module stayed up STABLE_S),
# the log line of every start, exit and restart with its reason, fault injection
# (fault(): that module's task raises RuntimeError("fault injected")), and
# feeding machine.WDT. Must never: know what a module does (it calls the module's
# run and reset), run more than the one watcher task of its own, restart anything
# once stop() began, or let a chore's error end the watching.
# Shared code: MicroPython and CPython. Times are real seconds (never scaled by
# META1LITE_CLOCK_SCALE): the watchdog counts real milliseconds.
from meta1lite import compat
from meta1lite.const import const

asyncio = compat.asyncio
LOG = const("mcp")
_RESTART_MIN_S = const(1)       # first restart delay of a module that died
STABLE_S = const(60)            # up this long: its next death starts the backoff over
_TICK_S = const(1)              # how often the watcher looks (and feeds the watchdog)
_WDT_FEEDS_PER_TIMEOUT = const(3)  # the watchdog is fed at least this often per timeout
_IDLE_S = const(3600)           # sleep of a module task that has no loop of its own
_FAULT = const("fault injected")


class Module:
    """One supervised module. deps: names of the modules it needs; run: an async
    callable, the body of its task (None: the task only stands for the module);
    reset: rebuilds its state before a restart (None: nothing to rebuild)."""

    def __init__(self, name, deps, run=None, reset=None):
        self.name = name
        self.deps = deps
        self.run = run
        self.reset = reset
        self.task = None
        self.reason = None      # why its task ended
        self.fault = False      # fault() asked for: its task raises
        self.delay = 0          # the current restart delay
        self.due = None         # real monotonic time of its pending restart
        self.up_since = 0
        self.restarts = 0


class Supervisor:
    """Runs the modules (a list in dependency order) as tasks and watches them."""

    def __init__(self, modules, restart_max, wdt=None, wdt_ms=0):
        self.modules = modules
        self.restart_max = max(_RESTART_MIN_S, restart_max)
        self.wdt = wdt
        self.tick = _TICK_S
        if wdt is not None and wdt_ms:
            self.tick = min(_TICK_S, wdt_ms / 1000 / _WDT_FEEDS_PER_TIMEOUT)
        self.chores = []        # [interval, next due, function]
        self.stopping = False
        self.watcher = None

    def find(self, name):
        """The Module called name, or None."""
        for mod in self.modules:
            if mod.name == name:
                return mod
        return None

    def every(self, interval_s, function):
        """Call function() from the watcher every interval_s (0: never)."""
        if interval_s:
            self.chores.append([interval_s, compat.real_monotonic() + interval_s, function])

    def start(self):
        """Start every module in order, then the watcher."""
        for mod in self.modules:
            self._start(mod, "started")
        self.watcher = asyncio.create_task(self._watch())

    def fault(self, name):
        """Make module name's task raise RuntimeError(_FAULT); False if it is not running."""
        mod = self.find(name)
        if mod is None or mod.task is None or self.stopping:
            return False
        mod.fault = True
        mod.task.cancel()
        return True

    def status(self):
        """{name: {"up": bool, "restarts": n}} for `meta1lite status`."""
        out = {}
        for mod in self.modules:
            out[mod.name] = {"up": mod.task is not None, "restarts": mod.restarts}
        return out

    async def stop(self):
        """Cancel the watcher and every module task (last started first)."""
        self.stopping = True
        tasks = [self.watcher] if self.watcher is not None else []
        for mod in reversed(self.modules):
            if mod.task is not None:
                tasks.append(mod.task)
            mod.task, mod.due = None, None
        self.watcher = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled, or died meanwhile
                pass

    # --- the module tasks -------------------------------------------------------

    def _start(self, mod, what):
        mod.reason, mod.fault = None, False
        mod.up_since = compat.real_monotonic()
        mod.task = asyncio.create_task(self._body(mod))
        compat.log.log("info", LOG, "%s %s" % (mod.name, what))

    async def _body(self, mod):
        try:
            try:
                if mod.run is None:         # the task only stands for the module
                    while True:
                        await asyncio.sleep(_IDLE_S)
                await mod.run()
            except asyncio.CancelledError:
                if not mod.fault:
                    raise
                mod.fault = False
                raise RuntimeError(_FAULT)
            mod.reason = "its task returned"
        except Exception as exc:  # noqa: BLE001 - a module's death is the watcher's business
            mod.reason = "%s: %s" % (type(exc).__name__, exc)

    # --- the watcher ------------------------------------------------------------

    async def _watch(self):
        while not self.stopping:
            try:
                if self.wdt is not None:
                    self.wdt.feed()
                self._look(compat.real_monotonic())
            except Exception as exc:  # noqa: BLE001 - the watcher must never die
                try:
                    compat.log.log("error", LOG, "watcher: %r" % (exc,))
                except Exception:  # noqa: BLE001 - no heap even for the line
                    pass
            await asyncio.sleep(self.tick)

    def _look(self, now):
        for mod in self.modules:
            if mod.task is not None and mod.task.done():
                self._died(mod, now)
            elif mod.task is None and mod.due is None and not self.stopping:
                # a restart that failed half-way (MemoryError): again, after its delay
                mod.due = now + max(mod.delay, _RESTART_MIN_S)
        for mod in self.modules:
            if mod.due is not None and mod.due <= now and self._deps_up(mod):
                self._restart(mod, now)
        for chore in self.chores:
            if chore[1] <= now:
                chore[1] = now + chore[0]
                chore[2]()

    def _died(self, mod, now):
        mod.task = None
        if now - mod.up_since >= STABLE_S:
            mod.delay = 0
        mod.delay = min(self.restart_max, mod.delay * 2 if mod.delay else _RESTART_MIN_S)
        mod.due = now + mod.delay
        dependents = self._dependents(mod)
        compat.log.log("error", LOG, "%s exited: %s; restarting in %ds%s" % (
            mod.name, mod.reason or "ended", mod.delay,
            " with " + ", ".join([d.name for d in dependents]) if dependents else ""))
        for dep in dependents:
            dep.due = mod.due           # restarted once mod is up again (_deps_up)
            if dep.task is not None:
                task, dep.task = dep.task, None
                task.cancel()
                compat.log.log("warning", LOG, "%s stopped: %s, which it needs, died"
                               % (dep.name, mod.name))

    def _dependents(self, mod):
        # every module needing mod, directly or through another (the list is in
        # dependency order, so one pass finds them all)
        found, names = [], [mod.name]
        for other in self.modules:
            for dep in other.deps:
                if dep in names and other.name not in names:
                    names.append(other.name)
                    found.append(other)
        return found

    def _deps_up(self, mod):
        for name in mod.deps:
            dep = self.find(name)
            if dep is not None and dep.task is None:
                return False
        return True

    def _restart(self, mod, now):
        mod.due = None
        if mod.reset is not None:
            try:
                mod.reset()
            except Exception as exc:  # noqa: BLE001 - e.g. an aliases file gone: back off
                mod.reason = "restart failed: %s: %s" % (type(exc).__name__, exc)
                mod.up_since = now      # it never came up: the backoff keeps growing
                self._died(mod, now)
                return
        mod.restarts += 1
        self._start(mod, "restarted (restart %d)" % mod.restarts)

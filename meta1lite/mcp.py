# meta1lite.mcp - the main control program (MeTA1's mcp): builds the modules,
# has the supervisor run them, reloads the configuration and stops in order.
#
# Owns: start-up order (logging, spool recovery, the smtps listeners; as root with
# mcp.user: the listeners, dropping root, then the spool; the modules as supervised
# tasks: smar, smtpc, qmgr, smtps, see supervisor.py), the control channel's mcp
# requests (reload, stop, fault MODULE), signals on CPython (SIGTERM/SIGINT stop,
# SIGHUP reload), a reload that every module takes or none does (a bad file keeps
# the old configuration and says why), the orderly stop within mcp.stop_timeout
# (listeners closed, 421 4.3.2 to open sessions, the queue synced, exit 0), and
# the board's periodic chores (adopting sendmail's incoming/, the heap log). The
# MicroPython unix port has no signals: reload and stop go through the control
# channel; Ctrl-C ends its process at once (__main__.py). On a board Ctrl-C is a
# KeyboardInterrupt in the running code, and mcp stops in order (_stop_interrupted).
# Must never: hold protocol or queue logic of its own, or leave the modules on two
# different configurations.
import sys

from meta1lite import compat, heap, listener, process, tls
from meta1lite.const import const
from meta1lite.supervisor import Module, Supervisor

asyncio = compat.asyncio
LOG = const("mcp")
_INCOMING_POLL_S = const(5)  # how often new `meta1lite sendmail` submissions are adopted
_EXIT_BUSY = const(75)       # the spool is locked by another process (EX_TEMPFAIL)
INTERRUPT_SLACK_S = const(2)  # after Ctrl-C: stop_timeout plus this, then the queue is closed
MODULE_NAMES = ("smar", "smtpc", "qmgr", "smtps")   # start order (dependencies first)
# options a reload cannot change in a running daemon (logged: "at the next start"); one
# str, split when used (a tuple of them costs a str object per name in a .mpy)
RESTART_ONLY = ("spool control smtps.listen smtps.listen_tls mcp.user mcp.watchdog_ms "
                "smtpc.tls_reserve qmgr.min_free_space qmgr.record_reserve qmgr.segment_size "
                "qmgr.free_segments")


class Daemon:
    """The running relay: the spool and the modules around it."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.spool = None
        self.smtps = None
        self.smar = None
        self.qmgr = None
        self.control = None
        self.supervisor = None
        self._steps = heap.Steps()      # the heap after each start-up step (boards)
        self.stopping = asyncio.Event()
        self.stop_reason = "stop requested"
        self.stopped = False

    async def start(self):
        """Recover the queue and bind the listeners (as root with mcp.user: bind, drop
        root, then recover), then start the modules."""
        # Every module is imported before the queue index is built, so that the
        # long-lived bytecode is not scattered among index entries (a fragmented
        # MicroPython heap has no room for a module later).
        from meta1lite.qmgr.control import start_control
        from meta1lite.qmgr.manager import QueueManager
        from meta1lite.smar.resolver import AddressResolver
        from meta1lite.smtps.server import SmtpServer
        from meta1lite.spool import open_configured
        compat.configure_logging(self.cfg["hostname"], self.cfg["log_level"],
                                ring_bytes=self.cfg["log_ring"])
        steps = self._steps
        steps.mark("boot+imports")
        heap.collect_often()
        listener.reserve_poll_slots(self.cfg)
        tls.tls_memory.configure(self.cfg["smtpc"]["tls_reserve"])    # before the index
        self.smar = AddressResolver(self.cfg)
        self.smtps = SmtpServer(self.cfg, None, None, self.smar)      # keys read as root
        steps.mark("smar+smtps")
        user = self.cfg["mcp"]["user"]
        dropping = process.can_drop(user)
        if not dropping:            # a client never meets a queue still recovering
            self._open_queue(open_configured, QueueManager)
        await self.smtps.start()            # ports below 1024 need root
        steps.mark("listeners")
        if dropping:                # the spool's files must be the user's: open it after
            process.drop_privileges(user)
            compat.log.log("info", LOG, "running as user %s" % user)
            self._open_queue(open_configured, QueueManager)
        self.control = await self._start_control(start_control)
        steps.mark("control")
        self.supervisor = self._supervise()
        self.supervisor.start()
        steps.mark("supervisor")
        if steps.marks:
            compat.log.log("info", LOG, "heap at start (in use after each step): " + steps.text())
            steps.marks = None
        compat.log.log("info", LOG, "daemon started; listening on %s" % ", ".join(
            "%s:%d" % ep for ep in self.smtps.endpoints()))

    def _open_queue(self, open_configured, queue_manager):
        self.spool = open_configured(self.cfg)
        self._steps.mark("spool")
        self.qmgr = queue_manager(self.cfg, self.spool, self.smar)
        self.smtps.spool, self.smtps.qmgr = self.spool, self.qmgr
        self._steps.mark("qmgr")

    async def _start_control(self, start_control):
        try:
            return await start_control(self.cfg, self.spool, self.qmgr, self)
        except OSError as exc:
            compat.log.log("warning", LOG, "control channel not started: %s" % exc)
            return None

    def _supervise(self):
        opts = self.cfg["mcp"]
        modules = [
            Module("smar", (), None, lambda: self.smar.reload(self.cfg)),
            Module("smtpc", (), None, lambda: self.qmgr.smtpc.reload(self.cfg)),
            Module("qmgr", ("smar", "smtpc"), self.qmgr.run, lambda: self.qmgr.reload(self.cfg)),
            Module("smtps", ("smar", "qmgr"), None, lambda: self.smtps.reload(self.cfg)),
        ]
        wdt, wdt_ms = process.watchdog(opts["watchdog_ms"])
        if wdt_ms != opts["watchdog_ms"] and wdt is not None:
            compat.log.log("warning", LOG, "watchdog_ms %d is longer than this board's watchdog "
                           "allows: it runs with %d" % (opts["watchdog_ms"], wdt_ms))
        supervisor = Supervisor(modules, opts["restart_max"], wdt, wdt_ms)
        supervisor.every(_INCOMING_POLL_S, self._adopt_incoming)
        if heap.heap_free() is not None:
            supervisor.every(opts["heap_log_interval"], _log_heap)
        return supervisor

    def _adopt_incoming(self):
        try:
            n = self.spool.scan_incoming()
        except OSError as exc:
            compat.log.log("warning", "qmgr", "incoming scan failed: %s" % exc)
            return
        if n:
            self.qmgr.wake()

    # --- stop ---------------------------------------------------------------------

    async def stop(self):
        """Stop in order within mcp.stop_timeout: no new connections, 421 4.3.2 to
        the open sessions, the modules, then the queue synced and closed."""
        if self.stopped:
            return
        self.stopped = True
        bound = self.cfg["mcp"]["stop_timeout"]
        compat.log.log("info", LOG, "stopping (%s)" % self.stop_reason)
        try:
            await asyncio.wait_for(self._stop_modules(), bound)    # real seconds
        except compat.TIMEOUT_ERRORS:
            compat.log.log("warning", LOG, "stop: not done after %ds; closing the queue"
                           " (everything acknowledged is in it)" % bound)
        self.close_queue()

    def close_queue(self):
        """The last step of a stop: the queue synced and closed."""
        if self.spool is not None:
            self.spool.close()
        compat.log.log("info", LOG, "stopped")

    async def _stop_modules(self):
        if self.smtps is not None:
            await self.smtps.stop()
        if self.control is not None:
            self.control.close()
            await self.control.wait_closed()
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.qmgr is not None:
            await self.qmgr.stop()
        if self.spool is not None:
            await self.spool.sync()

    async def serve(self):
        """Run until stop is requested (signal, control channel, Ctrl-C or request_stop())."""
        await self.start()
        try:
            await self.stopping.wait()
        finally:
            await self.stop()

    def request_stop(self, reason="stop requested"):
        """Begin the orderly stop (serve() returns when it is done)."""
        self.stop_reason = reason
        self.stopping.set()

    # --- reload -------------------------------------------------------------------

    def reload(self, cfg):
        """Give every module the new configuration, or none of them: returns None,
        or the error that kept the old one."""
        old = self.cfg
        try:
            self._apply(cfg)
        except Exception as exc:  # noqa: BLE001 - a TLS key, an aliases or users file
            self._apply_back(old)
            return "%s: %s" % (type(exc).__name__, exc)
        self.cfg = cfg
        for path in RESTART_ONLY.split():
            if _option(old, path) != _option(cfg, path):
                compat.log.log("warning", LOG, "reload: %s changed; it takes effect at the next"
                               " start" % path)
        compat.log.log("info", LOG, "configuration reloaded")
        return None

    def _apply(self, cfg):
        compat.configure_logging(cfg["hostname"], cfg["log_level"], ring_bytes=cfg["log_ring"])
        self.smar.reload(cfg)
        self.qmgr.smtpc.reload(cfg)
        self.qmgr.reload(cfg)
        self.smtps.reload(cfg)
        self.spool.max_queue_size = cfg["qmgr"]["max_queue_size"]
        self.spool.max_messages = cfg["qmgr"]["max_messages"]
        if self.supervisor is not None:
            self.supervisor.restart_max = cfg["mcp"]["restart_max"]

    def _apply_back(self, old):
        try:
            self._apply(old)
        except Exception as exc:  # noqa: BLE001 - the old files changed too
            compat.log.log("error", LOG, "reload: the old configuration could not be"
                           " re-applied either: %r" % (exc,))

    def reload_file(self):
        """Re-read the configuration file and reload(); returns None or the error
        (FILE:LINE:COL: error: ... lines, as `meta1lite check` prints them)."""
        path = self.cfg.get("config_file")
        if not path:
            error = "no configuration file to re-read (running on the embedded default)"
        else:
            error = _load_and(path, self.reload)
        if error is not None:
            compat.log.log("error", LOG, "reload of %s refused, keeping the old configuration:"
                           " %s" % (path, error.replace("\n", "; ")))
        return error

    # --- the control channel's mcp requests -----------------------------------

    def request(self, verb, args):
        """The control channel's reload | stop | fault MODULE: the reply (dict)."""
        if verb == "reload":
            error = self.reload_file()
            return {"ok": True} if error is None else {"ok": False, "error": error}
        if verb == "stop":
            self.request_stop("stop requested on the control channel")
            return {"ok": True, "stopping": True}
        if len(args) != 1 or args[0] not in MODULE_NAMES:
            return {"ok": False, "error": "usage: fault %s" % "|".join(MODULE_NAMES)}
        if not self.cfg["mcp"]["fault_injection"]:
            return {"ok": False, "error": "fault injection is off (mcp { fault_injection = yes; })"}
        if not self.supervisor.fault(args[0]):
            return {"ok": False, "error": "%s is not running (restarting?)" % args[0]}
        compat.log.log("warning", LOG, "fault injected into %s on request" % args[0])
        return {"ok": True, "module": args[0]}

    def status(self):
        """The modules' state for `meta1lite status`."""
        return {} if self.supervisor is None else {"modules": self.supervisor.status()}


def _option(cfg, path):
    for name in path.split("."):
        cfg = cfg.get(name) if isinstance(cfg, dict) else None
    return cfg


def _load_and(path, apply):
    # conf.load(path), then apply(cfg); the error text, or None. On MicroPython the
    # parser was dropped after start-up: it is imported for the reload and dropped again.
    loaded = "meta1lite.conf" in sys.modules
    from meta1lite import conf
    try:
        new = conf.load(path)
    except conf.ConfigError as exc:
        return str(exc)
    except OSError as exc:
        return "cannot read %s: %s" % (path, exc)
    finally:
        if not loaded:
            heap.forget_modules(conf.MODULES)
    return apply(new)


def _log_heap():
    # as `status` reports it: the high-water before collecting, free and in use after
    import gc

    from meta1lite.qmgr.control import heap_watch
    heap_watch.sample()
    gc.collect()
    compat.log.log("info", LOG, "heap: %d bytes free, %d in use, high-water %s" % (
        heap.heap_free(), heap.heap_used(), heap_watch.high))


def _install_signals(daemon):
    try:
        import signal
        loop = asyncio.get_event_loop()
        loop.add_signal_handler(signal.SIGTERM, daemon.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, daemon.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, daemon.reload_file)
    except (ImportError, AttributeError, NotImplementedError, RuntimeError):
        pass        # MicroPython: no signals; a board's Ctrl-C ends asyncio.run


def run(cfg):
    """Run the daemon in the foreground until stopped; returns an exit code.
    The spool's lock is taken first and held for the daemon's whole life: a second
    daemon on the same spool exits _EXIT_BUSY before touching anything."""
    from meta1lite.spool.lock import SpoolBusy, lock_spool
    try:
        lock = lock_spool(cfg["spool"])
    except SpoolBusy as exc:
        sys.stderr.write("meta1lite: %s\n" % exc)
        return _EXIT_BUSY
    try:
        return _run_locked(cfg)
    finally:
        heap.unlock_heap()        # after Ctrl-C: see _stop_interrupted
        lock.release()


def _run_locked(cfg):
    daemon = Daemon(cfg)

    async def main():
        _install_signals(daemon)
        await daemon.serve()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        _stop_interrupted(daemon)
    except MemoryError:
        # out of the event loop itself: a Ctrl-C raised inside a collection (see
        # heap.unlock_heap) does this; the loop is gone either way
        heap.unlock_heap()
        compat.log.log("warning", LOG, "the event loop ended in MemoryError (a Ctrl-C "
                       "inside a garbage collection does this)")
        _stop_interrupted(daemon)
    except OSError as exc:
        sys.stderr.write("meta1lite: %s\n" % exc)
        return 1
    return 0


class _StopOverdue(BaseException):
    """Ends the event loop when the stop after Ctrl-C has not finished in time."""


def _stop_interrupted(daemon):
    # Ctrl-C on a board lands between bytecodes of whatever runs: a task it lands in
    # is dead, and whatever waits for that task would wait forever; where it is raised
    # from an interrupt (stm32's second Ctrl-C), inside a collection it can leave the
    # heap locked (heap.unlock_heap). The orderly stop gets stop_timeout; then,
    # or at a second Ctrl-C, the loop is ended and the queue closed without it (the
    # queue holds everything acknowledged: that is what 250 means).
    heap.unlock_heap()
    daemon.stop_reason = "interrupted"
    bound = daemon.cfg["mcp"]["stop_timeout"] + INTERRUPT_SLACK_S

    deadline = []

    async def overdue():
        await asyncio.sleep(bound)
        raise _StopOverdue()

    async def stop():
        await daemon.stop()
        if deadline:
            deadline[0].cancel()    # not left queued for a later run (a board's REPL)
    # MicroPython only: queued before run(), not by the stop's task (seen on the sim:
    # that one never ran). CPython has no loop before run(), keeps a BaseException
    # raised in a task in the task, and takes Ctrl-C as a signal (daemon.stop bounds it)
    if compat.MICROPYTHON:
        deadline.append(asyncio.create_task(overdue()))
    try:
        asyncio.run(stop())
    except Exception:  # noqa: BLE001 - best effort after Ctrl-C
        pass
    except _StopOverdue:
        _close_now(daemon, "not done after %ds" % bound)
    except KeyboardInterrupt:
        heap.unlock_heap()
        _close_now(daemon, "interrupted again")


def _close_now(daemon, why):
    compat.log.log("warning", LOG, "stop: %s; closing the queue" % why)
    daemon.close_queue()


def main(cfg, argv):
    """`meta1lite run`: the daemon in the foreground; returns the exit status."""
    if argv:
        sys.stderr.write("meta1lite: run takes no arguments besides -c FILE\n")
        return 2
    return run(cfg)

# meta1lite.mcp - the main control program: starts the modules in one event loop
# and stops them in order.
#
# Owns: start-up order (logging, spool recovery, smtps listeners, the queue
# manager when present), the orderly stop, and signal handling on CPython (SIGTERM/
# SIGINT stop, SIGHUP reload). The MicroPython unix port has no signals: Ctrl-C
# (KeyboardInterrupt) stops it gracefully and SIGTERM kills it, which the queue's
# durability survives. Must never: hold protocol or queue logic of its own.
import sys

from meta1lite import compat, tls

asyncio = compat.asyncio
INCOMING_POLL_S = 5          # how often new `meta1lite sendmail` submissions are adopted
EXIT_BUSY = 75               # the spool is locked by another process (EX_TEMPFAIL)


class Daemon:
    """The running relay: the spool and the modules around it."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.spool = None
        self.smtps = None
        self.smar = None
        self.qmgr = None
        self.control = None
        self.on_reload = None       # what a `reload` on the control channel calls
        self.stopping = asyncio.Event()
        self.tasks = []

    async def start(self):
        # Every module is imported before the queue index is built, so that the
        # long-lived bytecode is not scattered among index entries (a fragmented
        # MicroPython heap has no room for a module later).
        from meta1lite.qmgr.control import start_control
        from meta1lite.qmgr.manager import QueueManager
        from meta1lite.smar.resolver import AddressResolver
        from meta1lite.smtps.server import SmtpServer
        from meta1lite.spool import open_configured
        compat.configure_logging(self.cfg["hostname"], self.cfg["log_level"])
        tls.tls_memory.configure(self.cfg["smtpc"]["tls_reserve"])    # before the index
        self.spool = open_configured(self.cfg)
        self.smar = AddressResolver(self.cfg)
        self.qmgr = QueueManager(self.cfg, self.spool, self.smar)
        self.tasks.append(asyncio.create_task(self.qmgr.run()))
        self.smtps = SmtpServer(self.cfg, self.spool, self.qmgr, self.smar)
        await self.smtps.start()
        self.tasks.append(asyncio.create_task(self._adopt_incoming()))
        self.control = await self._start_control(start_control)
        compat.log.log("info", "mcp", "daemon started; listening on %s" % ", ".join(
            "%s:%d" % ep for ep in self.smtps.endpoints()))

    async def _start_control(self, start_control):
        try:
            return await start_control(self.cfg, self.spool, self.qmgr, self.on_reload)
        except OSError as exc:
            compat.log.log("warning", "mcp", "control channel not started: %s" % exc)
            return None

    async def _adopt_incoming(self):
        while True:
            await compat.sleep(INCOMING_POLL_S)
            try:
                n = self.spool.scan_incoming()
            except OSError as exc:
                compat.log.log("warning", "qmgr", "incoming scan failed: %s" % exc)
                continue
            if n and self.qmgr is not None:
                self.qmgr.wake()

    async def stop(self):
        compat.log.log("info", "mcp", "stopping")
        if self.smtps is not None:
            await self.smtps.stop()
        if self.control is not None:
            self.control.close()
            await self.control.wait_closed()
        for task in self.tasks:
            task.cancel()
        if self.qmgr is not None:
            await self.qmgr.stop()
        if self.spool is not None:
            self.spool.close()
        compat.log.log("info", "mcp", "stopped")

    async def serve(self):
        """Run until stop is requested (signal, Ctrl-C or request_stop())."""
        await self.start()
        try:
            await self.stopping.wait()
        finally:
            await self.stop()

    def request_stop(self):
        self.stopping.set()

    def reload(self, cfg):
        """Take a new configuration: logging and smtps limits apply at once."""
        self.cfg = cfg
        compat.configure_logging(cfg["hostname"], cfg["log_level"])
        if self.smtps is not None:
            self.smtps.reload(cfg)
        compat.log.log("info", "mcp", "configuration reloaded")


def _install_signals(daemon, reload_cb):
    try:
        import signal
        loop = asyncio.get_event_loop()
        loop.add_signal_handler(signal.SIGTERM, daemon.request_stop)
        loop.add_signal_handler(signal.SIGINT, daemon.request_stop)
        loop.add_signal_handler(signal.SIGHUP, reload_cb)
    except (ImportError, AttributeError, NotImplementedError, RuntimeError):
        pass        # MicroPython: no signals; KeyboardInterrupt ends asyncio.run


def run(cfg, reload_config=None):
    """Run the daemon in the foreground until stopped; returns an exit code.
    The spool's lock is taken first and held for the daemon's whole life: a second
    daemon on the same spool exits EXIT_BUSY before touching anything."""
    from meta1lite.spool.lock import SpoolBusy, lock_spool
    try:
        lock = lock_spool(cfg["spool"])
    except SpoolBusy as exc:
        sys.stderr.write("meta1lite: %s\n" % exc)
        return EXIT_BUSY
    try:
        return _run_locked(cfg, reload_config)
    finally:
        lock.release()


def _run_locked(cfg, reload_config):
    daemon = Daemon(cfg)

    def reload():
        compat.log.log("info", "mcp", "reload requested")
        if reload_config is not None:
            reload_config(daemon)

    daemon.on_reload = reload

    async def main():
        _install_signals(daemon, reload)
        await daemon.serve()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        compat.log.log("info", "mcp", "interrupted")
        try:
            asyncio.run(daemon.stop())
        except Exception:  # noqa: BLE001 - best effort after Ctrl-C
            pass
    except OSError as exc:
        sys.stderr.write("meta1lite: %s\n" % exc)
        return 1
    return 0


def main(cfg, argv):
    """`meta1lite run`: the daemon in the foreground; returns the exit status."""
    if argv:
        sys.stderr.write("meta1lite: run takes no arguments besides -c FILE\n")
        return 2
    return run(cfg, _reload_config)


def _reload_config(daemon):
    """SIGHUP: re-read the file; a bad file keeps the running configuration."""
    path = daemon.cfg.get("config_file")
    if not path:
        return
    from meta1lite import conf
    try:
        new = conf.load(path)
    except (conf.ConfigError, OSError) as exc:
        compat.log.log("error", "mcp", "reload of %s failed, keeping the old configuration: %s"
                       % (path, exc))
        return
    daemon.reload(new)

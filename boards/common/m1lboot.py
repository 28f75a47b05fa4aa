# boards/common/m1lboot.py - starts meta1lite on a board (frozen into every board's
# firmware, next to the board's main.py; MicroPython only).
# Owns: what every board's main.py shares: the safe-mode escape (a file SAFE on the
# flash, or a pin held low at boot), retrying a step such as bringing the network up,
# the time from NTP (tried again while the relay runs until it answers), the board's
# network checked while the relay runs (a dropped WLAN joined again), running the
# relay from a configuration file on flash (the same
# path as `micropython -m meta1lite run -c FILE`: meta1lite.__main__.micro_main loads
# the configuration, drops the parser, runs mcp), the console's commands while the
# relay runs (a line typed on the console, e.g. `status`, goes to the relay's control
# requests in-process and its reply is printed as `console: {...}`, in `console~ `
# lines of 256 characters first when longer), and the heap figures
# printed at start and at exit (micropython.mem_info(): its "max free sz" is the
# largest free run of 16-byte blocks on a 32-bit board, what a TLS handshake's 16K
# record buffer needs).
# A relay that ends by an error (not a stop asked for, not a configuration to fix)
# resets the board after a pause: an unattended board comes back by itself.
# Must never: mount filesystems or bring up a network itself (main.py does, through
# retry()), hold relay logic of its own, or start the relay in safe mode.
import gc
import sys
import time

import micropython

CONF_NAME = "meta1lite.conf"
SAFE_NAME = "SAFE"
NTP_ATTEMPTS = 3
NTP_RETRY_S = 600               # while the relay runs, after the boot's NTP tries failed
LINK_CHECK_S = 30               # between the board's network checks while the relay runs
MAX_CONSOLE_LINE = 512          # the control channel's own limit (qmgr/control.py)
CONSOLE_PREFIX = "console: "
CONSOLE_MORE = "console~ "      # a reply's earlier pieces, each a line of its own
CONSOLE_CHUNK = 256             # characters of a reply per console line
NEWLINE = 10
CR = 13
RESET_PAUSE_S = 30              # after the relay ended by an error, then the board resets
RESET_EXIT = 3                  # the sim's exit status for a reset (simboot.RESET_EXIT)
# The relay's modules, imported here, a few frames deep, rather than from mcp's start
# inside the event loop: the C stack of a board (and of the sim, 40000 bytes) has no
# room for the import chain below asyncio's frames once main.py runs under a boot.
# What a running relay needs rarely is imported inside the loop at its first use (the
# DNS codec, the bounce writer, the control handlers, the spool's recovery): one
# module each, whose own imports are loaded already (README, Decisions).
PRELOAD = ("meta1lite.spool", "meta1lite.smar.resolver", "meta1lite.qmgr.manager",
           "meta1lite.qmgr.control", "meta1lite.smtps.server", "meta1lite.mcp")


_ntp_pending = []               # [True] while the clock still waits for NTP


def heap_line(when):
    gc.collect()
    return "m1lboot: %s heap used=%d free=%d" % (when, gc.mem_alloc(), gc.mem_free())


def safe_mode(mount_point, pin_id, active=0):
    """True (and says so) when the relay must not start: MOUNT/SAFE exists, or the
    pin PIN_ID (None: no pin) reads ACTIVE at boot (0: held to ground, pulled up
    otherwise; 1: a button to 3V3 with its own pull-down). The REPL stays free."""
    try:
        open(mount_point + "/" + SAFE_NAME).close()
        why = "%s/%s exists" % (mount_point, SAFE_NAME)
    except OSError:
        why = _pin_held(pin_id, active)
    if why:
        print("m1lboot: safe mode (%s): the relay is not started; the REPL is free" % why)
    return bool(why)


def _pin_held(pin_id, active):
    if pin_id is None:
        return None
    import machine
    pull = machine.Pin.PULL_UP if active == 0 else None
    if machine.Pin(pin_id, machine.Pin.IN, pull).value() == active:
        return "pin %s held at %d" % (pin_id, active)
    return None


def retry(step, what, pause_s, attempts=0):
    """Call step() until it returns True (attempts=0: for ever), pausing pause_s
    between tries and saying so; True once it succeeded."""
    n = 0
    while True:
        n += 1
        try:
            if step():
                return True
        except OSError as exc:
            print("m1lboot: %s: %s" % (what, exc))
        if attempts and n >= attempts:
            print("m1lboot: %s failed %d times; going on" % (what, n))
            return False
        print("m1lboot: %s not done; retrying in %ds" % (what, pause_s))
        time.sleep(pause_s)


def set_time(pause_s):
    """The wall clock from NTP (ntptime), NTP_ATTEMPTS tries; True once set. The relay
    also runs without it (a clock before 2025 counts as unknown in the queue), and
    run() then tries again every NTP_RETRY_S: verifying a smarthost's certificate
    needs today's date (rp2's clock starts in 2021)."""
    if retry(_ntp_step, "NTP", pause_s, NTP_ATTEMPTS):
        return True
    _ntp_pending.append(True)
    return False


def _ntp_step():
    import ntptime
    ntptime.settime()
    print("m1lboot: time from NTP: %d" % time.time())
    return True


async def _ntp_later(asyncio, cfg):
    # while the relay runs, until NTP answers once. ntptime.settime() resolves its host
    # with lwIP's getaddrinfo, which blocks the event loop until lwIP's DNS answers or
    # gives up (1+1+2+3 s per DNS server: more than rp2's 8388 ms watchdog): the host
    # is looked up with the relay's own DNS (asyncio, its own timeouts) and ntptime is
    # handed the address, which lwIP takes without a query; then only ntptime's 1 s
    # socket timeout can block
    while _ntp_pending:
        await asyncio.sleep(NTP_RETRY_S)
        try:
            if await _ntp_by_address(cfg):
                del _ntp_pending[:]
        except Exception as exc:  # noqa: BLE001 - OSError, or no heap: again later
            print("m1lboot: NTP: %r; again in %ds" % (exc, NTP_RETRY_S))


async def _ntp_by_address(cfg):
    import ntptime

    from meta1lite.smar import dnsresolve
    name = getattr(ntptime, "host", None)      # micropython-lib's: "pool.ntp.org"
    if name and not dnsresolve.ip_literal(name):
        resolver = dnsresolve.for_config(cfg["smar"])
        found = await resolver.resolve_addresses(name, (dnsresolve.FAMILY_INET,))
        if not found:
            raise OSError("%s has no IPv4 address" % name)
        ntptime.host = found[0][1]
    try:
        return _ntp_step()
    finally:
        if name:
            ntptime.host = name


def run(mount_point, keep_link=None):
    """Run the relay with MOUNT_POINT/meta1lite.conf until it stops; its exit status.
    A relay that ended by an error once its configuration was read (a listener that
    could not be bound, the flash, memory at start-up) resets the board after
    RESET_PAUSE_S, as an unattended board must come back by itself; a stop asked for
    (`stop`, Ctrl-C) or a configuration to fix leaves the REPL free. keep_link: the
    board's check of its network, called every LINK_CHECK_S while the relay runs (it
    joins a WLAN again that dropped; it must not block)."""
    print(heap_line("boot"))
    loaded = []

    def on_config(cfg):
        loaded.append(True)
        _start_tasks(keep_link, cfg)
    try:
        for name in PRELOAD:
            __import__(name)
        from meta1lite import heap
        heap.frozen_code()
        from meta1lite.__main__ import micro_main
        status = micro_main(["run", "-c", mount_point + "/" + CONF_NAME], on_config=on_config)
    except Exception as exc:  # noqa: BLE001 - whatever ended it, the board comes back
        print("m1lboot: the relay failed: %r" % (exc,))
        status, loaded = 1, [True]
    print(heap_line("exit"))
    micropython.mem_info()
    if status and loaded:
        print("m1lboot: the relay ended (status %s); resetting in %ds" % (status, RESET_PAUSE_S))
        time.sleep(RESET_PAUSE_S)
        reset()
    return status


def reset():
    """Reset the board (machine.reset). The sim, whose unix port has none, ends its
    process instead: its host boots it again, as after a reset."""
    try:
        import machine
        machine.reset()
    except (ImportError, AttributeError):
        pass
    raise SystemExit(RESET_EXIT)


def _start_tasks(keep_link, cfg):
    # the boot's tasks beside the relay: the console's commands, NTP again, the link
    from meta1lite import compat
    compat.asyncio.create_task(_console_loop(compat.asyncio))
    if _ntp_pending:
        compat.asyncio.create_task(_ntp_later(compat.asyncio, cfg))
    if keep_link is not None:
        compat.asyncio.create_task(_keep_link(compat.asyncio, keep_link))


async def _keep_link(asyncio, keep_link):
    while True:
        await asyncio.sleep(LINK_CHECK_S)
        try:
            keep_link()
        except Exception as exc:  # noqa: BLE001 - the check must outlive its errors
            print("m1lboot: link: %r" % (exc,))


async def _console_loop(asyncio):
    # created before mcp's asyncio.run: MicroPython's run() keeps the queued task.
    # A line goes to the running relay in-process (qmgr.control.ask): lwIP has no
    # loopback interface, so the control channel's socket on 127.0.0.1 cannot be
    # reached from the board itself.
    # The console is read a byte at a time from its binary stream: a board's USB
    # console hands over bytes as they are typed, and sys.stdin.readline() would block
    # the whole event loop until Enter; a byte that is not UTF-8 must not end the task.
    reader = asyncio.StreamReader(sys.stdin.buffer)
    line = bytearray(MAX_CONSOLE_LINE)
    n = 0
    while True:
        got = await reader.read(1)
        if not got:
            return
        c = got[0]
        if c != NEWLINE and c != CR:
            if n < MAX_CONSOLE_LINE:
                line[n] = c
                n += 1
            continue
        data, n = bytes(line[:n]), 0
        try:
            text = data.decode().strip()
            if text:
                _print_reply(_ask(text))
        except Exception as exc:  # noqa: BLE001 - the console must outlive any request
            _print_reply({"ok": False, "error": "control: %r" % (exc,)})


def _ask(text):
    from meta1lite.qmgr import control
    return control.ask(text)


def _print_reply(reply):
    # the reply as JSON, in CONSOLE_CHUNK pieces: `console~ ` lines, then the last
    # piece as `console: `, so that the relay's log lines fall between pieces, never
    # inside one
    import json
    text = json.dumps(reply)
    out = sys.stdout
    for at in range(0, len(text), CONSOLE_CHUNK):
        last = at + CONSOLE_CHUNK >= len(text)
        out.write(CONSOLE_PREFIX if last else CONSOLE_MORE)
        out.write(text[at:at + CONSOLE_CHUNK])
        out.write("\n")

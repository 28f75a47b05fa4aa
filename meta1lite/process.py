# meta1lite.process - compat's process half, imported only by mcp: the board's
# hardware watchdog and dropping root after the listeners are bound. Kept out of
# compat.py, which every module imports (on the unix port its bytecode lives in
# the heap), as tls.py and spool/lock.py are.
# Owns: starting machine.WDT where the board has one, and becoming mcp.user on a
# POSIX CPython started as root. Must never: start a watchdog nobody feeds (the
# caller feeds it until the process ends), or change ids when not root.
# Shared code: MicroPython and CPython.
import os

WATCHDOG_LIMITS_MS = (32767, 8388)     # the longest machine.WDT timeouts: stm32's, rp2's


def watchdog(timeout_ms):
    """(the board's hardware watchdog (machine.WDT), the timeout it runs with), or
    (None, 0) where there is none (CPython, the unix port) or timeout_ms is 0. A
    timeout longer than the board allows runs at the longest it takes (one of
    WATCHDOG_LIMITS_MS). Once started it cannot be stopped: the caller must feed()
    it until the process ends."""
    if not timeout_ms:
        return None, 0
    try:
        import machine
    except ImportError:
        return None, 0
    wdt = getattr(machine, "WDT", None)
    if wdt is None:
        return None, 0
    for ms in (timeout_ms,) + tuple(m for m in WATCHDOG_LIMITS_MS if m < timeout_ms):
        try:
            return wdt(timeout=ms), ms
        except ValueError:
            pass
    raise ValueError("watchdog_ms %d: longer than this board's watchdog takes" % timeout_ms)


def can_drop(user, os_module=os):
    """True if drop_privileges(user) would change ids: a user is set and this is
    root on a runtime with setuid (CPython on POSIX)."""
    return bool(user) and hasattr(os_module, "setuid") and os_module.getuid() == 0


def drop_privileges(user, os_module=os, pwd_module=None):
    """Started as root (CPython) with `user` set: become that user, with its group
    and no supplementary groups; True if done. False where there is nothing to do
    (no user, not root, a runtime without setuid). OSError for an unknown user."""
    if not can_drop(user, os_module):
        return False
    if pwd_module is None:
        import pwd as pwd_module
    try:
        entry = pwd_module.getpwnam(user)
    except KeyError:
        raise OSError("mcp.user: no such user '%s'" % user)
    os_module.setgroups([])
    os_module.setgid(entry.pw_gid)
    os_module.setuid(entry.pw_uid)
    return True

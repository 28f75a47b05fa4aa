# meta1lite.cli.inject - how `meta1lite sendmail` hands a message to the queue so
# that exit 0 means durable on every runtime (CPython and the MicroPython unix
# port, which cannot sync a directory).
# Owns: the order of the three paths: (1) the running daemon, over the control
# channel (`inject`; it commits through its journal and replies after the sync);
# (2) no daemon: take the spool's lock and commit through the same journal, into
# a segment created ahead of need; (3) the lock is held by a daemon that does not
# answer (starting, or a control channel this user cannot open): wait up to
# _BUSY_WAIT_S, then, where directories can be synced (CPython), a complete segment
# into incoming/; else Busy (exit 75). Must never: return before the message is
# durable, or send a message to the daemon twice.
import json
import os
import time

from meta1lite import compat, durable
from meta1lite.cli import host
from meta1lite.cli.channel import DaemonDown, request
from meta1lite.const import const

_BUSY_WAIT_S = const(10)        # how long a locked spool with a silent daemon is retried
BUSY_POLL_S = 0.5
INFO = {"client": "local", "proto": "sendmail"}


class Busy(Exception):
    """The message could not be queued now (sendmail exits 75)."""


class Refused(Exception):
    """The daemon will never take this message (sendmail exits 65)."""


def _to_daemon(cfg, sender, rcpts, pieces, size):
    env = json.dumps({"from": sender, "rcpt": rcpts, "uid": host.getuid()}).encode()
    reply = request(cfg, "inject %d %d" % (len(env), size), [env] + pieces)
    if reply.get("ok"):
        return reply["queue_id"]
    error = reply.get("error", "the daemon refused the message")
    raise Busy(error) if reply.get("temporary") else Refused(error)


def _to_journal(cfg, sender, rcpts, pieces):
    from meta1lite.spool import TOO_BIG, open_configured
    from meta1lite.spool.lock import lock_spool
    lock = lock_spool(cfg["spool"], True)           # SpoolBusy: a live daemon has it
    try:
        fresh = not durable.CAN_SYNC_DIR and not _has_segments(cfg["spool"])
        if fresh and not durable.CAN_SYNC_ALL:
            raise Busy("a new queue's first segment cannot be made durable here")
        spool = open_configured(cfg)
        try:
            reason = spool.check_accept(sum(len(p) for p in pieces))
            if reason:
                raise Refused(reason) if reason == TOO_BIG else Busy(reason)
            queue_id = _commit(spool, sender, rcpts, pieces)
        finally:
            spool.close()
        return queue_id     # the journal ran `sync` after making each new segment
    finally:
        lock.release()


def _has_segments(path):
    # a spool a daemon has run on has segments made ahead of need: appending to one
    # is durable without syncing a directory, which the unix port cannot do
    try:
        return bool(os.listdir(path + "/seg"))
    except OSError:
        return False


def _commit(spool, sender, rcpts, pieces):
    writer = spool.new_message()
    for piece in pieces:
        writer.write(piece)
    info = dict(INFO)
    info["pickup"] = host.getuid()        # the daemon logs the pickup line at start
    return compat.asyncio.run(spool.commit(writer, sender, rcpts, info))


def _to_incoming(cfg, sender, rcpts, pieces):
    from meta1lite.spool import Spool
    q = cfg["qmgr"]
    spool = Spool(cfg["spool"], q["max_queue_size"], q["max_messages"], q["min_free_space"],
                  record_reserve=q["record_reserve"])
    return spool.inject(sender, rcpts, iter(pieces), dict(INFO))


def queue_message(cfg, sender, rcpts, pieces):
    """Queue one message (pieces: its bytes); its queue ID once it is durable.
    Raises Refused (never), or Busy, SpoolFull or OSError (try again later)."""
    from meta1lite.spool.lock import SpoolBusy
    size = sum(len(p) for p in pieces)
    deadline = time.time() + _BUSY_WAIT_S
    while True:
        try:
            return _to_daemon(cfg, sender, rcpts, pieces, size)
        except DaemonDown as exc:
            if exc.sent:
                raise Busy("the daemon did not confirm the message: %s" % exc)
        try:
            return _to_journal(cfg, sender, rcpts, pieces)
        except SpoolBusy as exc:
            if time.time() >= deadline:
                if durable.CAN_SYNC_DIR:
                    return _to_incoming(cfg, sender, rcpts, pieces)
                raise Busy(str(exc))
        time.sleep(BUSY_POLL_S)

# meta1lite.cli.queuetool - `meta1lite queue ...`, `meta1lite mailq`, `meta1lite status`,
# `meta1lite reload` (CPython and the MicroPython unix port, with the same output).
#
# Owns: the queue tools people use every day. When the daemon runs (its control
# channel answers), changes (flush, hold, release, delete) go through it; when it
# does not, list and show read the spool read-only and hold/release/delete change
# the spool directly. `flush` without a running daemon exits 1 ("mail system is
# down", as postqueue -f does): there is nobody to deliver. Output: `mailq` /
# `postqueue -p` shaped for people, `--json` one object per line as `postqueue -j`.
# Exit status: 0 done, 1 failed (unknown queue ID, daemon down for flush/status),
# 2 bad usage. Must never: write to the spool while the daemon answers on its
# control channel or without holding the spool's lock (meta1lite/spool/lock.py), or print a message body except for `show`.
import sys

from meta1lite import compat
from meta1lite.cli.channel import DaemonDown, request, where
from meta1lite.cli.jsonline import dumps
from meta1lite.const import const

USAGE = "usage: meta1lite queue list|show ID|flush|delete ID...|hold ID...|release ID... [--json]"
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
_SHOW_HEADER_LIMIT = const(64 * 1024)
# key order of the JSON objects (postqueue -j's first; the rest sorted), split when used
JSON_ORDER = ("ok queue_name queue_id arrival_time message_size forced_expire sender recipients "
              "address delay_reason status attempts next_try reply recipients_state info headers "
              "running error")


# --- the control channel (client side: cli/channel.py) --------------------------------

def daemon_running(cfg):
    """True if the daemon answers on its control channel."""
    try:
        return bool(request(cfg, "ping").get("ok"))
    except DaemonDown:
        return False


# --- the spool, read directly --------------------------------------------------------

def open_spool(cfg, readonly):
    """The spool of cfg, recovered (readonly: nothing is written)."""
    from meta1lite.spool import open_configured
    return open_configured(cfg, readonly)


def queue_name(msg):
    """'hold', 'deferred' (tried before) or 'active'."""
    if msg.held:
        return "hold"
    for rcpt in msg.recipients:
        if rcpt.attempts and rcpt.status in ("queued", "deferred"):
            return "deferred"
    return "active"


def as_json(msg):
    """The postqueue -j object of a message."""
    rcpts = [{"address": r.addr, "delay_reason": r.reply or ""}
             for r in msg.recipients if r.status in ("queued", "deferred")]
    return {"queue_name": queue_name(msg), "queue_id": msg.id, "arrival_time": msg.arrival,
            "message_size": msg.size, "forced_expire": False, "sender": msg.sender,
            "recipients": rcpts}


def _arrival(epoch):
    return compat.format_arrival(epoch)


def print_list(messages, out):
    """postqueue -p style listing."""
    if not messages:
        out.write("Mail queue is empty\n")
        return
    out.write("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n")
    total = 0
    for msg in messages:
        mark = {"hold": "!", "active": "*"}.get(queue_name(msg), " ")
        out.write("%-11s %8d %s  %s\n" % (msg.id + mark, msg.size, _arrival(msg.arrival),
                                          msg.sender or "MAILER-DAEMON"))
        for rcpt in msg.recipients:
            if rcpt.status not in ("queued", "deferred"):
                continue
            if rcpt.reply:
                out.write("%42s(%s)\n" % ("", rcpt.reply[:200]))
            out.write("%42s%s\n" % ("", rcpt.addr))
        out.write("\n")
        total += msg.size
    out.write("-- %d Kbytes in %d Request%s.\n" % ((total + 1023) // 1024, len(messages),
                                                 "" if len(messages) == 1 else "s"))


def show(spool, msg, as_json_flag, out):
    """Envelope, per-recipient state and the message itself."""
    rcpts = [{"address": r.addr, "status": r.status, "attempts": r.attempts,
              "next_try": r.next_try, "reply": r.reply} for r in msg.recipients]
    if as_json_flag:
        obj = as_json(msg)
        obj["recipients_state"] = rcpts
        obj["info"] = msg.info
        head = b"".join(_limited(spool.read_body(msg.id), _SHOW_HEADER_LIMIT))
        obj["headers"] = head.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        out.write(_json(obj) + "\n")
        return
    out.write("*** ENVELOPE RECORDS %s ***\n" % msg.id)
    out.write("queue_name: %s\narrival_time: %s\nmessage_size: %d\nsender: %s\n" % (
        queue_name(msg), _arrival(msg.arrival), msg.size, msg.sender))
    for r in rcpts:
        when = " next_try: %s" % _arrival(r["next_try"]) if r["next_try"] else ""
        out.write("recipient: %s status: %s attempts: %d%s\n" % (r["address"], r["status"],
                                                               r["attempts"], when))
        if r["reply"]:
            out.write("    reply: %s\n" % r["reply"])
    out.write("*** MESSAGE CONTENTS %s ***\n" % msg.id)
    out.flush()
    for chunk in spool.read_body(msg.id):
        out.write(chunk.decode("utf-8", "replace"))
    out.write("\n*** END OF MESSAGE ***\n")


def _limited(chunks, limit):
    got = 0
    for chunk in chunks:
        yield chunk
        got += len(chunk)
        if got >= limit:
            return


# --- the commands ----------------------------------------------------------------------

def _quiet_logs():
    compat.configure_logging("localhost", "error")


def cmd_list(cfg, args, as_json_flag):
    spool = open_spool(cfg, True)
    messages = spool.messages()
    if as_json_flag:
        for msg in messages:
            sys.stdout.write(_json(as_json(msg)) + "\n")
    else:
        print_list(messages, sys.stdout)
    return EXIT_OK


def cmd_show(cfg, args, as_json_flag):
    if len(args) != 1:
        return _usage("show takes one queue ID")
    spool = open_spool(cfg, True)
    msg = spool.get(args[0])
    if msg is None:
        sys.stderr.write("meta1lite: %s: no such message in the queue\n" % args[0])
        return EXIT_FAIL
    show(spool, msg, as_json_flag, sys.stdout)
    return EXIT_OK


def cmd_flush(cfg, args, as_json_flag):
    if args:
        return _usage("flush takes no arguments")
    try:
        reply = request(cfg, "flush")
    except DaemonDown:
        sys.stderr.write("meta1lite: the mail system is down (nobody answers on %s); queued "
                         "mail is tried when the daemon starts\n" % _where(cfg))
        return EXIT_FAIL
    return _report(reply, as_json_flag, "flush: %d deferred messages scheduled now"
                   % reply.get("flushed", 0))


_ACTIONS = {"hold": "placed on hold", "release": "released from hold", "delete": "removed"}


def cmd_change(verb, cfg, args, as_json_flag):
    if not args:
        return _usage("%s takes one or more queue IDs" % verb)
    from meta1lite.spool.lock import SpoolBusy, lock_spool
    spool, lock = None, None
    status = EXIT_OK
    try:
        for queue_id in args:
            try:
                reply = request(cfg, "%s %s" % (verb, queue_id))
            except DaemonDown:
                if spool is None:
                    lock = lock_spool(cfg["spool"], True)   # SpoolBusy: not ours to write
                    spool = open_spool(cfg, False)
                reply = _change_directly(spool, verb, queue_id)
            if _report(reply, as_json_flag, "%s: %s" % (queue_id, _ACTIONS[verb])):
                status = EXIT_FAIL
    except SpoolBusy as exc:
        sys.stderr.write("meta1lite: %s\n" % exc)
        return EXIT_FAIL
    finally:
        if spool is not None:
            spool.close()
        if lock is not None:
            lock.release()
    return status


def _change_directly(spool, verb, queue_id):
    # no daemon answers, and this process holds the spool's lock
    done = getattr(spool, verb)(queue_id)
    return {"ok": True, "queue_id": queue_id} if done else {
        "ok": False, "error": "%s: no such message in the queue" % queue_id}


def _report(reply, as_json_flag, text):
    if as_json_flag:
        sys.stdout.write(_json(reply) + "\n")
    elif reply.get("ok"):
        sys.stdout.write(text + "\n")
    if not reply.get("ok"):
        if not as_json_flag:
            sys.stderr.write("meta1lite: %s\n" % reply.get("error", "failed"))
        return EXIT_FAIL
    return EXIT_OK


def _where(cfg):
    return where(cfg)


def _json(obj):
    return dumps(obj, JSON_ORDER.split())


def _usage(message):
    sys.stderr.write("meta1lite: %s\n%s\n" % (message, USAGE))
    return EXIT_USAGE


def _split(argv):
    flag = "--json" in argv or "-j" in argv
    return [a for a in argv if a not in ("--json", "-j")], flag


def main(cfg, argv):
    """`meta1lite queue SUBCOMMAND ...`; returns the exit status."""
    args, as_json_flag = _split(list(argv))
    if not args:
        return _usage("no queue command given")
    _quiet_logs()
    verb, rest = args[0].lower(), args[1:]
    if verb in ("list", "mailq"):
        return cmd_list(cfg, rest, as_json_flag) if not rest else _usage("list takes no arguments")
    if verb == "show":
        return cmd_show(cfg, rest, as_json_flag)
    if verb == "flush":
        return cmd_flush(cfg, rest, as_json_flag)
    if verb in _ACTIONS:
        return cmd_change(verb, cfg, rest, as_json_flag)
    return _usage("unknown queue command %r" % verb)


def status_main(cfg, argv):
    """`meta1lite status [--json]`: the daemon's state; exit 1 if it is not running."""
    args, as_json_flag = _split(list(argv))
    if args:
        return _usage("status takes only --json")
    _quiet_logs()
    try:
        reply = request(cfg, "status")
    except DaemonDown:
        reply = {"ok": False, "running": False, "error": "not running (nobody answers on %s)" % _where(cfg)}
        try:
            reply["messages"] = open_spool(cfg, True).count()
        except OSError:
            pass
    if as_json_flag:
        sys.stdout.write(_json(reply) + "\n")
    else:
        _print_status(reply)
    return EXIT_OK if reply.get("ok") else EXIT_FAIL


def _print_status(reply):
    if not reply.get("running"):
        print("meta1lite: %s" % reply.get("error"))
        if "messages" in reply:
            print("queue: %d messages" % reply["messages"])
        return
    print("meta1lite: running, pid %s, up %ss" % (reply.get("pid"), reply.get("uptime")))
    print("queue: %s messages (%s deferred, %s on hold); %s deliveries running" % (
        reply.get("messages"), reply.get("deferred"), reply.get("held"), reply.get("deliveries")))
    counts = reply.get("counts") or {}
    if counts:
        print("since start: " + ", ".join("%s %s" % (k, counts[k]) for k in sorted(counts)))
    if reply.get("heap") is not None:
        print("heap in use: %d bytes" % reply["heap"])
    if reply.get("heap_free") is not None:
        print("heap free: %d bytes; high-water: %s bytes" % (reply["heap_free"], reply.get("heap_high_water")))
    for line in reply.get("log") or []:
        print("  " + line)

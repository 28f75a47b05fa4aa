# Hardware in the loop (issue 9, item 4): one board deployed with scripts/flash and
# booted, then checked over the network and its console. By default the simulated
# Pico W (sim firmware, the Pico W's heap and flash, its console on a pseudo-terminal);
# with --board rpi-pico-w --port /dev/ttyACM0 --board-host IP --hop-host IP a real one
# (see tests/hil/README.md). Owns the board-level checks a user would notice: flashing
# copies only what changed, mail relayed, retried, kept across a power cut, the heap
# over 200 messages, `status` and a crashed module restarted, the safe-mode escape.
# CPython-only (the host side).
import re
import smtplib
import threading

from helpers.board import free_port, load_profile
from helpers.nexthop import NextHop
from test_delivery import message, strip_received, wait_for

DEADLINE_S = 180
HEAP_MESSAGES = 200
HEAP_CLIENTS = 3                # the sim config's 3 sessions (5 lwIP sockets)
CUT_AFTER = (40, 90, 160)       # flash programs+erases from boot: while receiving
CUT_MESSAGES = 30
RESEND_TRIES = 10               # per client, after a 4xx refusal


def send_one(rig, n):
    data = message(n, rcpt="user%d@dest.test" % n)
    with smtplib.SMTP(rig.host, rig.port, timeout=60) as s:
        s.sendmail("dev@home.test", ["user%d@dest.test" % n], data)
    return data


def numbers(hop):
    return set(int(re.search(rb"Subject: test (\d+)", m.content).group(1)) for m in hop.messages)


def send_many(rig, count, clients):
    """COUNT messages from CLIENTS concurrent sessions, each resent after a temporary
    refusal as an SMTP client does; ({n: bytes} acknowledged, [4xx refusals])."""
    sent, refused, errors = {}, [], []

    def worker(w):
        todo = list(range(w, count, clients))
        for _ in range(RESEND_TRIES):
            try:
                with smtplib.SMTP(rig.host, rig.port, timeout=120) as s:
                    while todo:
                        data = message(todo[0], rcpt="user%d@dest.test" % todo[0])
                        s.sendmail("dev@home.test", ["user%d@dest.test" % todo[0]], data)
                        sent[todo.pop(0)] = data
                return
            except smtplib.SMTPResponseException as exc:
                if exc.smtp_code // 100 != 4:
                    raise
                refused.append("%d %s" % (exc.smtp_code, exc.smtp_error.decode()))
            except smtplib.SMTPServerDisconnected as exc:
                refused.append(repr(exc))
        errors.append("client %d: gave up on %d messages" % (w, len(todo)))
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, "\n".join(errors + refused) + "\n" + rig.log()[-3000:]
    return sent, refused


def test_flash_copies_what_changed_and_boots_to_the_banner(rig):
    conf = rig.config(free_port())
    first = rig.flash(conf)
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(r"copied \S*/main.py", first.stdout), first.stdout
    assert re.search(r"copied \S*/meta1lite.conf", first.stdout), first.stdout
    banner = re.search(r"daemon started; listening on \S+ after ([0-9.]+) s", first.stdout)
    assert banner, first.stdout
    again = rig.flash(conf)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "copied 0, skipped 2" in again.stdout and "] copied" not in again.stdout
    print("\nboot to banner: %s s (first flash), %s s (second, which copied nothing)"
          % (banner.group(1), re.search(r"after ([0-9.]+) s", again.stdout).group(1)))


def test_flash_refuses_a_bad_configuration_and_copies_nothing(rig):
    rig.deploy(rig.config(free_port()))
    bad = rig.flash("smtps { max_conections = 3; }\n")
    assert bad.returncode == 1
    assert "deploy.conf:1:9: error: unknown option 'max_conections'" in bad.stdout, bad.stdout
    assert "nothing copied" in bad.stdout and "] copied" not in bad.stdout


def test_mail_is_relayed_to_a_next_hop_on_the_host(rig):
    with NextHop(rig.hop_host) as hop:
        rig.deploy(rig.config(hop.port))
        data = send_one(rig, 1)
        wait_for(lambda: len(hop.messages) == 1, "the delivery", rig.sim, DEADLINE_S)
    assert strip_received(hop.messages[0].content) == data
    assert hop.messages[0].rcpt_tos == ["user1@dest.test"]


def test_mail_is_retried_after_the_next_hop_was_down(rig):
    hop_port = free_port()
    mark = len(rig.log())
    rig.deploy(rig.config(hop_port))
    data = send_one(rig, 2)                    # acknowledged while nothing listens
    if rig.sim is not None:
        rig.wait_log(r"status=deferred", after=mark)
    with NextHop(rig.hop_host, hop_port) as hop:
        wait_for(lambda: len(hop.messages) == 1, "the retried delivery", rig.sim, DEADLINE_S)
    assert strip_received(hop.messages[0].content) == data


def test_power_cut_while_receiving_loses_nothing_acknowledged(rig):
    with NextHop(rig.hop_host) as hop:
        rig.deploy(rig.config(hop.port))
        acked = {}
        for cut in CUT_AFTER:
            mark = len(rig.log())
            rig.cut_power_after(cut)
            wait_for(lambda: rig.is_off() or "daemon started" in rig.log()[mark:],
                     "the boot with a cut armed at %d" % cut, rig.sim, DEADLINE_S)
            n0 = len(acked)
            for n in range(n0, n0 + CUT_MESSAGES):
                try:
                    acked[1000 * cut + n] = send_one(rig, 1000 * cut + n)
                except (OSError, smtplib.SMTPException):
                    break
            wait_for(rig.is_off, "the power cut at %d" % cut, rig.sim, DEADLINE_S)
            rig.power_back()
        wait_for(lambda: set(acked) <= numbers(hop), "every acknowledged message",
                 rig.sim, DEADLINE_S)
    if rig.sim is not None:
        assert rig.log().count("simflash: power cut") == len(CUT_AFTER)
    got = dict((int(re.search(rb"Subject: test (\d+)", m.content).group(1)), m) for m in hop.messages)
    for n, data in acked.items():
        assert strip_received(got[n].content) == data
    print("\npower cuts after %s flash operations: %d acknowledged, %d delivered, 0 lost"
          % (CUT_AFTER, len(acked), len(hop.messages)))


def test_heap_high_water_stays_within_the_profile_over_200_messages(rig):
    heap = load_profile()["heap_bytes"]
    with NextHop(rig.hop_host) as hop:
        rig.deploy(rig.config(hop.port))
        sent, refused = send_many(rig, HEAP_MESSAGES, HEAP_CLIENTS)
        wait_for(lambda: len(hop.messages) >= HEAP_MESSAGES, "200 deliveries", rig.sim, 600)
        status = rig.ask("status")
    assert numbers(hop) == set(sent)
    assert status["ok"] and status["heap_high_water"] is not None
    assert status["heap_high_water"] < heap
    assert status["heap"] + status["heap_free"] <= heap
    print("\n%d messages from %d clients: heap high-water %d of %d bytes (%.0f%%), in use "
          "after %d, free %d; temporary refusals (resent): %d %s"
          % (HEAP_MESSAGES, HEAP_CLIENTS, status["heap_high_water"], heap,
             100.0 * status["heap_high_water"] / heap, status["heap"], status["heap_free"],
             len(refused), sorted(set(refused))))


def test_status_over_the_console(rig):
    with NextHop(rig.hop_host) as hop:
        rig.deploy(rig.config(hop.port))
        send_one(rig, 3)
        wait_for(lambda: len(hop.messages) == 1, "the delivery", rig.sim, DEADLINE_S)
        status = rig.ask("status")
    assert status["ok"] and status["running"]
    assert status["heap"] > 0 and status["heap_free"] > 0 and status["heap_high_water"] > 0
    assert any("daemon started" in line for line in status["log"]), status["log"]
    assert any("status=sent" in line for line in status["log"]), status["log"]


def test_a_module_crashed_on_purpose_is_restarted_by_mcp(rig):
    """Needs the supervisor (issue 9 item 1): `fault MODULE` on the control channel
    with `mcp { fault_injection = yes; }`, and mcp's `restart` log line."""
    with NextHop(rig.hop_host) as hop:
        rig.deploy(rig.config(hop.port, extra="mcp { fault_injection = yes; }"))
        for n, module in enumerate(("smtpc", "qmgr", "smar", "smtps")):
            mark = len(rig.log())
            reply = rig.ask("fault %s" % module)
            assert reply["ok"], reply
            if rig.sim is not None:
                rig.wait_log(r"(mcp|master)\S*: .*%s.*restart|restart.*%s" % (module, module),
                             after=mark)
            data = send_one(rig, 10 + n)
            wait_for(lambda: 10 + n in numbers(hop), "mail after %s restarted" % module,
                     rig.sim, DEADLINE_S)
            got = [m for m in hop.messages if b"Subject: test %d\r\n" % (10 + n) in m.content]
            assert strip_received(got[0].content) == data


def test_safe_mode_keeps_the_relay_off_and_the_repl_free(rig):
    rig.deploy(rig.config(free_port()))
    from helpers.hil import PROMPT, read_until
    with rig.open_console() as con:             # put SAFE on the flash from the REPL
        con.write(b"\r\x03")
        read_until(con, re.compile(re.escape(PROMPT)), 60)
        con.write(b"open('/flash/SAFE', 'w').close()\r")
        read_until(con, re.compile(re.escape(PROMPT)), 10)
        mark = len(rig.log())
        con.write(b"\x04")                      # reset
        read_until(con, re.compile(rb"safe mode \(/flash/SAFE exists\).*\n(.|\n)*>>> "), 60)
        con.write(b"print('repl', 6 * 7)\r")
        read_until(con, re.compile(rb"repl 42"), 10)
    assert "daemon started" not in rig.log()[mark:]
    try:
        smtplib.SMTP(rig.host, rig.port, timeout=5).quit()
        listening = True
    except OSError:
        listening = False
    assert not listening


def test_flash_bundle_copies_the_mpy_bundle_once(rig):
    """--bundle (a stock firmware): the .mpy bundle goes to lib/ too, and only once.
    Copy only (--no-reset): run from flash, the bundle's bytecode would need the heap
    of a router, not of a Pico W (README, Running on MicroPython)."""
    conf = rig.config(free_port())
    first = rig.flash(conf, "--bundle", "--no-reset")
    assert first.returncode == 0, first.stdout + first.stderr
    mpys = re.findall(r"copied (\S*/lib/meta1lite/\S+\.mpy)", first.stdout)
    assert any(p.endswith("/lib/meta1lite/mcp.mpy") for p in mpys), first.stdout
    assert any(p.endswith("/lib/meta1lite/spool/journal.mpy") for p in mpys), first.stdout
    again = rig.flash(conf, "--bundle", "--no-reset")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "copied 0, skipped %d" % (len(mpys) + 2) in again.stdout, again.stdout

# The simulated Pico W (issue 8, Build 2): the sim firmware (meta1lite frozen in, 32-bit,
# mbedtls on the GC heap) booted by its main.py with the Pico W's 192,448-byte heap and
# its 848 KiB LittleFS2 flash on simflash, relaying smtplib clients' mail to an aiosmtpd
# next hop over loopback. Owns the board-level "it fits" proofs: everything delivered
# byte for byte, no MemoryError, and the flash wear per message printed.
# CPython-only (the driver side); skips without a compiler / MicroPython source
# (fails in CI).
import re
import smtplib
import threading

import pytest
import trustme
from helpers.board import SimBoard, free_port, load_profile, queue_budget, sim_config, via_route
from helpers.nexthop import NextHop
from test_delivery import message, strip_received, wait_for

CLIENTS = 3                     # the sim config allows 3 sessions (lwIP: 5 sockets)
MESSAGES_PER_CLIENT = 10
MESSAGE_BYTES = 2048            # the issue's wear figures are per relayed 2 KB message
MAX_ERASES, MAX_PROGRAMS = 2, 20    # issue 8: per relayed 2 KB message
DEADLINE_S = 180
TLS_MESSAGES = 10
TLS_DEADLINE_S = 40
ROUTER_HEAP = 1024 * 1024       # a router's heap: proves TLS + verification + AUTH work
PICO_W_HEAP = 192448            # boards/rpi-pico-w/profile.json
# a MemoryError however it is logged ("memory allocation failed" is its text);
# "low memory ...: closing the session" is the relay declining new mail (421 4.3.2), not a failure
OUT_OF_MEMORY = ("MemoryError", "memory allocation failed", "out of memory", "ENOMEM")


def send_concurrently(port, count, clients, size):
    """CLIENTS smtplib sessions sending COUNT messages in all; {n: bytes sent}."""
    sent, errors = {}, []

    def worker(w):
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
                for n in range(w, count, clients):
                    data = message(n, rcpt="user%d@dest.test" % n, size=size)
                    s.sendmail("dev@home.test", ["user%d@dest.test" % n], data)
                    sent[n] = data
        except (OSError, smtplib.SMTPException) as exc:
            errors.append("client %d: %r" % (w, exc))
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent, errors


def assert_no_memory_errors(log):
    bad = [line for line in log.splitlines() if any(word in line for word in OUT_OF_MEMORY)]
    assert not bad, "\n".join(bad[:20])


def per_message(before, after, count):
    return dict((k, (after[k] - before[k]) / float(count)) for k in after)


def test_sim_pico_w_relays_at_192k(tmp_path):
    count = CLIENTS * MESSAGES_PER_CLIENT
    with NextHop() as hop:
        port = free_port()
        board = SimBoard(tmp_path)
        board.create_flash(sim_config(port, via_route(hop.port)))
        board.start(port)
        try:
            booted = board.wait_flash_idle()           # boot writes done
            sent, errors = send_concurrently(port, count, CLIENTS, MESSAGE_BYTES)
            assert not errors, "\n".join(errors) + "\n" + board.log()[-4000:]
            wait_for(lambda: len(hop.messages) >= count, "%d deliveries" % count, board, DEADLINE_S)
            relayed = board.wait_flash_idle()          # done records written, queue at rest
        finally:
            status = board.stop()
    log = board.log()
    assert status == 0, log[-4000:]
    assert_no_memory_errors(board.log())
    seen = {}
    for m in hop.messages:
        n = int(re.search(rb"Subject: test (\d+)", m.content).group(1))
        assert n not in seen, "delivered twice: %d" % n
        assert strip_received(m.content) == sent[n]
        seen[n] = m
    assert sorted(seen) == list(range(count))
    wear = per_message(booted, relayed, count)
    progsize = board.profile["flash"]["progsize"]
    print("\nsim Pico W, heap %d: %d messages of %d bytes from %d clients relayed; per message: "
          "%.2f erases, %.1f programs (%.1f %d-byte pages), %.0f reads; boot: %s; %s"
          % (board.heap, count, MESSAGE_BYTES, CLIENTS, wear["erases"], wear["programs"],
             wear["prog_bytes"] / progsize, progsize, wear["reads"], booted,
             " / ".join(line for line in log.splitlines() if line.startswith("m1lboot:"))))
    # issue 8's wear goal; the floor is one copied last block a sync (~1.55 for a 2.3K
    # record synced alone): recycling segments in place once cost 0.7 more a message
    assert wear["erases"] <= MAX_ERASES and wear["programs"] <= MAX_PROGRAMS, wear


FOUR_YEARS_S = 4 * 365 * 86400     # uptime: the Pico W's 32-bit float clock steps by 8 s
UPTIME_MESSAGES, UPTIME_DEFERRED = 5, 2
UPTIME_DEADLINE_S = 60


def test_a_board_up_for_four_years_relays_and_retries_on_time(tmp_path):
    """rp2's floats are 32-bit (so are the sim's): four years after boot the relay's
    clock keeps 8-second steps. Mail still flows, a deferred message is retried
    (retry_min 2s) without a storm, and nothing runs out of memory."""
    with NextHop() as hop:
        port = free_port()
        board = SimBoard(tmp_path, uptime_s=FOUR_YEARS_S)
        board.create_flash(sim_config(port, via_route(hop.port)))
        board.start(port)
        try:
            hop.fail_next(UPTIME_DEFERRED)
            sent, errors = send_concurrently(port, UPTIME_MESSAGES, 1, MESSAGE_BYTES)
            assert not errors, "\n".join(errors) + "\n" + board.log()[-4000:]
            wait_for(lambda: len(hop.messages) >= UPTIME_MESSAGES, "%d deliveries" % UPTIME_MESSAGES,
                     board, UPTIME_DEADLINE_S)
        finally:
            status = board.stop()
    log = board.log()
    assert status == 0, log[-4000:]
    assert_no_memory_errors(log)
    assert "Traceback" not in log, log[-4000:]
    assert sorted(strip_received(m.content) for m in hop.messages) == sorted(sent.values())
    # each deferred message tried again once or twice, not in a loop
    assert len(hop.mail_commands) <= UPTIME_MESSAGES + 2 * UPTIME_DEFERRED, hop.mail_commands


def test_a_refused_recipient_bounces_from_the_board(tmp_path):
    """The next hop refuses one recipient for good: the board writes the sender a
    delivery status notification and delivers it (the bounce code, imported only when
    a notice is due, runs on the board's firmware and heap)."""
    refused = "nobody@dest.test"
    with NextHop(rcpt_replies={refused: "550 5.1.1 no such user"}) as hop:
        port = free_port()
        board = SimBoard(tmp_path)
        board.create_flash(sim_config(port, via_route(hop.port)))
        board.start(port)
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.sendmail("dev@home.test", [refused], message(0, rcpt=refused, size=MESSAGE_BYTES))
            wait_for(lambda: hop.messages, "the bounce", board, UPTIME_DEADLINE_S)
        finally:
            status = board.stop()
    log = board.log()
    assert status == 0, log[-4000:]
    assert_no_memory_errors(log)
    bounce = hop.messages[0]
    assert bounce.mail_from == "<>" and bounce.rcpt_tos == ["dev@home.test"], bounce
    assert b"550 5.1.1 no such user" in bounce.content and refused.encode() in bounce.content


# programs + erases counted from boot (boot takes ~19, a 2 KB message ~12): during boot,
# receiving, committing, delivering and recording; with the profile's 32K segments (about
# 14 messages each) the later cuts fall while segments are rolled, freed and recycled
CUT_POINTS = (5, 12, 20, 30, 45, 60, 80, 100, 125, 150, 175, 200, 225, 250, 280, 310,
              340, 370, 400, 430)
CUT_MESSAGES = 48              # ~10 flash operations each, with their delivery


def send_until_cut(board, count):
    """Send one message at a time until the board dies; {n: bytes} it acknowledged."""
    acked = {}
    for n in range(count):
        data = message(n, rcpt="user%d@dest.test" % n, size=MESSAGE_BYTES)
        try:
            with smtplib.SMTP("127.0.0.1", board.port, timeout=30) as s:
                s.sendmail("dev@home.test", ["user%d@dest.test" % n], data)
        except (OSError, smtplib.SMTPException):
            break
        acked[n] = data
    return acked


def boot_or_die(board, port, cut_after):
    """Boot with a power cut armed; False when the power failed before it listened."""
    board.start(port, cut_after=cut_after, wait=False)
    try:
        board.wait_listening()
        return True
    except AssertionError:
        if board.proc.returncode == -9:
            return False
        raise


def cut_once(work, cut):
    """One power cut after `cut` flash operations, then a reboot without one;
    (acknowledged, delivered) once every acknowledged message arrived."""
    with NextHop() as hop:
        port = free_port()
        board = SimBoard(work)
        board.create_flash(sim_config(port, via_route(hop.port)))
        acked = send_until_cut(board, CUT_MESSAGES) if boot_or_die(board, port, cut) else {}
        if len(acked) < CUT_MESSAGES:
            board.proc.wait(timeout=DEADLINE_S)                 # the power cut's kill
        elif board.proc.poll() is None:
            board.wait_flash_idle()             # the cut may still come while delivering
        board.stop()
        cut_log = board.log()
        board.start(port)                                       # power back, no cut
        try:
            wait_for(lambda: set(acked) <= delivered_numbers(hop), "%d acknowledged "
                     "messages after the cut at %d" % (len(acked), cut), board, DEADLINE_S)
        finally:
            board.stop()
        assert "simflash: power cut" in cut_log, "no power cut at %d:\n%s" % (cut, cut_log[-2000:])
        assert_no_memory_errors(board.log())
        return len(acked), len(hop.messages)


def test_power_cuts_lose_no_acknowledged_message(tmp_path):
    rows = []
    for cut in CUT_POINTS:
        work = tmp_path / ("cut%d" % cut)
        work.mkdir()
        acked, delivered = cut_once(work, cut)
        rows.append((cut, acked, delivered))
    print("\npower cut after N flash operations (programs + erases), then a reboot; "
          "duplicates allowed, losses not\n%6s %13s %10s" % ("N", "acknowledged", "delivered"))
    for row in rows:
        print("%6d %13d %10d" % row)


# --- flash space (issue 8 item 4) -------------------------------------------------------
FILL_BYTES = 20 * 1024          # large messages fill the 848K flash in a few seconds
FILL_LIMIT = 120                # more than either the queue size or the flash can take
FILL_RETRY = "retry_max = 3s;"  # the next hop comes up later: retry soon after


def test_profile_queue_budget_fits_the_flash():
    profile = load_profile()
    flash, queue = profile["flash"], profile["queue"]
    assert queue["segment_size"] % flash["block_size"] == 0
    assert queue_budget(profile) <= flash["block_size"] * flash["block_count"]


def fill_queue(port, limit):
    """Send FILL_BYTES messages until one is refused: ({n: bytes} accepted, refusal)."""
    acked = {}
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        for n in range(limit):
            data = message(n, rcpt="user%d@dest.test" % n, size=FILL_BYTES)
            try:
                s.sendmail("dev@home.test", ["user%d@dest.test" % n], data)
            except smtplib.SMTPResponseException as exc:
                return acked, (exc.smtp_code, exc.smtp_error)
            except smtplib.SMTPRecipientsRefused as exc:
                return acked, list(exc.recipients.values())[0]
            acked[n] = data
    return acked, None


@pytest.mark.parametrize("limit", ["max_queue_size", "flash"])
def test_full_queue_refuses_452_and_still_drains(tmp_path, limit):
    """The next hop is down while clients fill the queue: new mail gets 452 4.3.1 (at
    max_queue_size, or with max_queue_size out of the way at the flash's end), the
    failed attempts keep recording state, and once the hop is back everything drains
    and new mail is accepted again."""
    hop_port = free_port()
    port = free_port()
    queue = {} if limit == "max_queue_size" else {"max_queue_size": "16M"}
    board = SimBoard(tmp_path)
    board.create_flash(sim_config(port, via_route(hop_port), qmgr_extra=FILL_RETRY, queue=queue))
    board.start(port)
    try:
        acked, refusal = fill_queue(port, FILL_LIMIT)
        assert refusal is not None and refusal[0] == 452 and b"4.3.1" in refusal[1], refusal
        queued = sum(len(d) for d in acked.values())
        if limit == "max_queue_size":       # the flash holds what max_queue_size promises
            assert queued >= board.profile["queue"]["max_queue_size"] - 2 * FILL_BYTES
        with NextHop(port=hop_port) as hop:
            wait_for(lambda: set(acked) <= delivered_numbers(hop), "the full queue draining",
                     board, DEADLINE_S)
            board.wait_flash_idle()
            after = message(999, size=MESSAGE_BYTES)
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
                s.sendmail("dev@home.test", ["user999@dest.test"], after)
            wait_for(lambda: 999 in delivered_numbers(hop), "mail after the drain", board, 60)
    finally:
        status = board.stop()
    log = board.log()
    assert status == 0, log[-4000:]
    assert_no_memory_errors(board.log())
    assert "OSError(28" not in log and "ENOSPC" not in log and "Errno 28" not in log, log[-4000:]
    print("\nsim, limit %s: %d messages (%d bytes) queued, then %r; all delivered after the "
          "hop came back" % (limit, len(acked), queued, refusal))


# --- Ctrl-C, as a board takes it ---------------------------------------------------------
CTRL_C_ROUNDS = 4               # Ctrl-C at different points of a burst of deliveries
CTRL_C_MESSAGES = 12


def send_numbered(port, numbers):
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        for n in numbers:
            s.sendmail("dev@home.test", ["user%d@dest.test" % n],
                       message(n, rcpt="user%d@dest.test" % n, size=MESSAGE_BYTES))


def test_ctrl_c_during_deliveries_stops_in_order_and_loses_nothing(tmp_path):
    """A board raises Ctrl-C's KeyboardInterrupt between bytecodes of whatever task
    runs (the sim is built to: firmware/variants/sim); the task it lands in is dead, the
    stop after it is bounded (mcp._stop_interrupted): exit 0, the queue closed, and the
    next boot delivers what was left."""
    with NextHop() as hop:
        port = free_port()
        board = SimBoard(tmp_path)
        board.create_flash(sim_config(port, via_route(hop.port), qmgr_extra=FILL_RETRY))
        for round_no in range(CTRL_C_ROUNDS):
            numbers = range(round_no * CTRL_C_MESSAGES, (round_no + 1) * CTRL_C_MESSAGES)
            hop.fail_next(0)
            board.start(port)
            send_numbered(port, numbers)
            wait_for(lambda: len(delivered_numbers(hop) & set(numbers)) >= 2 + round_no,
                     "deliveries", board, DEADLINE_S)
            hop.fail_next(1000)                 # what is left stays queued
            before = len(board.log())
            status = board.stop()
            stop_log = board.log()[before:]
            assert status == 0 and "stopping (interrupted)" in stop_log, stop_log
            assert "stopped" in stop_log, stop_log
        hop.fail_next(0)
        board.start(port)
        try:
            wait_for(lambda: set(range(CTRL_C_ROUNDS * CTRL_C_MESSAGES)) <= delivered_numbers(hop),
                     "everything after the last boot", board, DEADLINE_S)
        finally:
            board.stop()
    assert_no_memory_errors(board.log())


def delivered_numbers(hop):
    return set(int(re.search(rb"Subject: test (\d+)", m.content).group(1)) for m in hop.messages)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "smtp.isp.test")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    return d


SMARTHOST_ROUTE = 'tls = required; tls_verify = yes; auth = "isp";'
SMARTHOST_SMTPC = ('ca_file = "/flash/ca.pem"; tls_reserve = yes; credentials "isp" { user = "me"; '
                   'password_file = "/flash/smarthost.password"; }')


@pytest.mark.parametrize("heap", [ROUTER_HEAP, PICO_W_HEAP])
def test_sim_smarthost_starttls_verified_auth(tmp_path, pki, heap):
    with NextHop(cert=(str(pki / "cert.pem"), str(pki / "key.pem")), require_starttls=True,
                 users={"me": "s3cret-pw"}) as hop:
        port = free_port()
        board = SimBoard(tmp_path, heap=heap)
        board.create_flash(sim_config(port, via_route(hop.port, extra=SMARTHOST_ROUTE),
                                      smtpc_extra=SMARTHOST_SMTPC))
        board.put_text("ca.pem", (pki / "ca.pem").read_text())
        board.put_text("smarthost.password", "s3cret-pw\n")
        board.start(port)
        try:
            sent, errors = send_concurrently(port, TLS_MESSAGES, 1, MESSAGE_BYTES)
            assert not errors, "\n".join(errors)
            try:
                wait_for(lambda: len(hop.messages) >= TLS_MESSAGES, "TLS deliveries", None,
                         TLS_DEADLINE_S)
            except AssertionError:
                pass                        # reported below with the board's own reasons
        finally:
            board.stop()
    log = board.log()
    enomem = log.count("ENOMEM")
    print("\nsim, heap %d, smarthost STARTTLS + verify + AUTH: %d of %d delivered, %d ENOMEM "
          "handshake failures; %s" % (heap, len(hop.messages), TLS_MESSAGES, enomem,
                                      " / ".join(line for line in log.splitlines()
                                                 if line.startswith("m1lboot:"))))
    assert len(hop.messages) == TLS_MESSAGES and all(m.tls for m in hop.messages), log[-4000:]
    assert all(ok for _login, ok in hop.auth_attempts) and hop.auth_attempts
    assert_no_memory_errors(board.log())

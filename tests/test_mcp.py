# mcp, the supervisor (issue 9, item 1), against the real daemon on CPython and
# under the MicroPython unix port: a module made to raise (`fault MODULE` on the
# control channel) is restarted with backoff, with what depends on it, each start,
# exit and restart logged with its reason, while the relay keeps accepting and
# delivering; a reload (control channel on both runtimes, SIGHUP on CPython) gives
# every module the new routes, aliases, local domains, limits, TLS and AUTH users,
# keeps the rate and lockout counters, and a broken file is refused with
# FILE:LINE:COL while the old configuration keeps running; an orderly stop (control
# channel, SIGTERM on CPython) says 421 4.3.2 to an open session, exits 0, and every
# message acknowledged before it is delivered after a restart; Ctrl-C ends the unix
# port's process at once and loses nothing either. Dropping root to mcp.user is a unit
# test with os mocked (the test machine runs as root; the test process keeps its uid).
# CPython-only driver.
import asyncio
import base64
import signal
import smtplib

import pytest
import trustme
from helpers.daemon import RUNTIMES, Daemon, config_text, free_port
from helpers.nexthop import NextHop
from helpers.smtpclient import Client
from test_delivery import cli, message, send, start_relay, via, wait_for

from meta1lite import conf, mcp, process
from meta1lite.cli.queuetool import request
from meta1lite.smtps import authdb

STOP_TIMEOUT_S = 10             # mcp.stop_timeout in these tests
EXIT_SLACK_S = 20               # a loaded machine: the process may take this much longer
ITERATIONS = 256                # PBKDF2 iterations of the test users (fast on MicroPython)


def control(daemon, line):
    """One control-channel request to the daemon (the reply dict)."""
    return request(conf.load(daemon.conf_path), line)


def _exits(daemon, what):
    """The number of log lines saying so."""
    return daemon.log().count(what)


def _all_up(daemon):
    modules = control(daemon, "status")["modules"]
    return all(modules[name]["up"] for name in modules)


# --- restarts ---------------------------------------------------------------------

@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_module_that_raises_is_restarted_and_mail_keeps_flowing(runtime, tmp_path):
    with NextHop() as hop:
        daemon = start_relay(runtime, tmp_path, via(hop.port),
                             top="mcp { fault_injection = yes; heap_log_interval = 1s; }")
        try:
            sent = 0
            for module in ("smar", "smtpc", "qmgr", "smtps"):
                exited = "%s exited: RuntimeError: fault injected; restarting in 1s" % module
                assert control(daemon, "fault " + module) == {"ok": True, "module": module}
                send(daemon.port, "dev@home.test", ["u%d@dest.test" % sent], message(sent))
                sent += 1                           # accepted while the module is down
                wait_for(lambda: _exits(daemon, exited) == 1, module + " exit", daemon)
                wait_for(lambda: _all_up(daemon), module + " restart", daemon)
            log = daemon.log()
            assert "smar exited: RuntimeError: fault injected; restarting in 1s with qmgr, smtps" in log
            assert "qmgr stopped: smar, which it needs, died" in log
            assert "smtpc exited: RuntimeError: fault injected; restarting in 1s with qmgr, smtps" in log
            assert "smtps exited: RuntimeError: fault injected; restarting in 1s\n" in log
            # at once again: the backoff doubles
            wait_for(lambda: control(daemon, "fault qmgr").get("ok"), "qmgr up", daemon)
            wait_for(lambda: "qmgr exited: RuntimeError: fault injected; restarting in 2s with smtps"
                     in daemon.log(), "the second qmgr exit", daemon)
            send(daemon.port, "dev@home.test", ["u%d@dest.test" % sent], message(sent))
            sent += 1
            wait_for(lambda: len(hop.messages) >= sent, "every message delivered", daemon)
            status = control(daemon, "status")
            assert status["modules"]["smar"] == {"up": True, "restarts": 1}
            assert status["modules"]["qmgr"]["restarts"] == 4       # 2 faults, 2 as a dependent
            if runtime == "micropython":
                assert "bytes free" in daemon.log() and "high-water" in daemon.log()
        finally:
            daemon.stop()
    assert sorted(m.rcpt_tos[0] for m in hop.messages) == sorted(
        "u%d@dest.test" % n for n in range(sent))


# --- reload -------------------------------------------------------------------------

def _users(path, user, password):
    path.write_text(authdb.set_user("", user, authdb.hash_password(password, ITERATIONS)))
    return str(path)


def _tls_files(tmp_path):
    cert = trustme.CA().issue_cert("relay.test")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    return 'tls { certificate = "%s"; key = "%s"; }' % (tmp_path / "cert.pem", tmp_path / "key.pem")


def _reload_conf(tmp_path, port, ctl, hop_port, users, extra_smtps="", smar=""):
    smtps = ("max_messages_per_client_per_minute = 3; auth { users = \"%s\"; max_failures = 2;"
             " lockout = 10m; } %s" % (users, extra_smtps))
    top = """control = 127.0.0.1:%d;
smar { route "*" { via = "[127.0.0.1]:%d"; } %s }
smtpc { io_timeout = 1h; }
""" % (ctl, hop_port, smar)
    return config_text(str(tmp_path / "spool"), port, smtps_extra=smtps, top_extra=top)


def _auth(client, user, password):
    token = ("\0%s\0%s" % (user, password)).encode()
    return client.cmd("AUTH PLAIN " + base64.b64encode(token).decode())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_reload_gives_every_module_the_new_configuration_or_keeps_the_old(runtime, tmp_path):
    port, ctl = free_port(), free_port()
    with NextHop() as hop_a, NextHop() as hop_b:
        first = _reload_conf(tmp_path, port, ctl, hop_a.port,
                             _users(tmp_path / "users1", "alice", "right"))
        daemon = Daemon(runtime, tmp_path, first, port).start()
        try:
            for n in range(2):      # 2 of the 3 messages a minute of 127.0.0.1
                send(port, "dev@home.test", ["user@dest.test"], message(n))
            with Client(port) as c:
                c.greeting_and_ehlo()
                assert _auth(c, "alice", "wrong").code == 535
                assert _auth(c, "alice", "wrong").code == 535
                assert _auth(c, "alice", "right").code == 454          # locked out
            (tmp_path / "aliases").write_text("info: ops@dest.test\n")
            second = _reload_conf(
                tmp_path, port, ctl, hop_b.port, _users(tmp_path / "users2", "bob", "pw2"),
                extra_smtps="max_recipients = 1; local_domains = { home.test }; " + _tls_files(tmp_path),
                smar='aliases = "%s";' % (tmp_path / "aliases"))
            (tmp_path / "meta1lite.conf").write_text(second)
            run = cli(daemon, "reload")
            assert run.returncode == 0 and "reloaded" in run.stdout, run.stderr
            _check_second(daemon, port, hop_b)
            assert control(daemon, "fault qmgr")["error"] == \
                "fault injection is off (mcp { fault_injection = yes; })"
            _check_refused(daemon, tmp_path, hop_b)
            if runtime == "cpython":
                _check_sighup(daemon, tmp_path, hop_a, second)
        finally:
            daemon.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_auth_after_a_reload_took_the_users_away_is_refused(runtime, tmp_path):
    port, ctl = free_port(), free_port()
    with NextHop() as hop:
        first = _reload_conf(tmp_path, port, ctl, hop.port, _users(tmp_path / "users", "alice", "pw"))
        daemon = Daemon(runtime, tmp_path, first, port).start()
        try:
            with Client(port) as c:
                assert "AUTH" in c.greeting_and_ehlo().text              # offered now
                top = "control = 127.0.0.1:%d;\nsmar { route \"*\" { via = \"[127.0.0.1]:%d\"; } }\n" \
                    % (ctl, hop.port)
                (tmp_path / "meta1lite.conf").write_text(
                    config_text(str(tmp_path / "spool"), port, top_extra=top))
                run = cli(daemon, "reload")
                assert run.returncode == 0 and "reloaded" in run.stdout, run.stderr
                r = _auth(c, "alice", "pw")
                assert (r.code, r.text[:5]) == (502, "5.5.1"), r
                assert c.cmd("NOOP").code == 250                          # the session goes on
            assert "session error" not in daemon.log() and "Traceback" not in daemon.log()
        finally:
            daemon.stop()


def _check_second(daemon, port, hop_b):
    with Client(port) as c:                     # the lockout of 127.0.0.1 survived
        assert "STARTTLS" in c.greeting_and_ehlo().text                 # TLS now
        assert _auth(c, "bob", "pw2").code == 454
    with Client(port, source="127.0.0.2") as c:     # another client: the new users file
        c.greeting_and_ehlo()
        assert _auth(c, "alice", "right").code == 535
        assert _auth(c, "bob", "pw2").code == 235
        assert c.cmd("MAIL FROM:<dev@home.test>").code == 250
        assert c.cmd("RCPT TO:<nobody@home.test>").code == 550    # local now, not aliased
        assert c.cmd("RCPT TO:<x@dest.test>").code == 250
        r = c.cmd("RCPT TO:<y@dest.test>")
        assert (r.code, r.text[:5]) == (452, "4.5.3"), r            # max_recipients = 1
    send(port, "dev@home.test", ["info@home.test"], message(10))    # the 3rd of the minute
    wait_for(lambda: [m.rcpt_tos for m in hop_b.messages] == [["ops@dest.test"]],
             "the alias delivered through the new route", daemon)
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:       # the rate survived
        send(port, "dev@home.test", ["user@dest.test"], message(11))
    assert refused.value.smtp_code == 450


def _send_as_bob(port, n):
    s = smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=("127.0.0.2", 0))
    try:
        s.ehlo()
        s.login("bob", "pw2")
        s.sendmail("dev@home.test", ["user@dest.test"], message(n))
    finally:
        s.quit()


def _check_refused(daemon, tmp_path, hop_b):
    path = tmp_path / "meta1lite.conf"
    good = conf.load(str(path))
    text = path.read_text()
    path.write_text(text + "mcp {\n    stop_timout = 5s;\n}\n")
    error = "%s:%d:5: error: unknown option 'stop_timout' in section 'mcp'; did you mean" \
        " 'stop_timeout'?" % (path, text.count("\n") + 2)
    run = cli(daemon, "reload")                 # the tool reads the file first: refused there
    assert run.returncode == 1 and error in run.stderr, run.stderr
    reply = request(good, "reload")             # the daemon refuses it too, with the error
    assert reply == {"ok": False, "error": error}, reply
    assert "reload of %s refused, keeping the old configuration" % path in daemon.log()
    _send_as_bob(daemon.port, 12)               # the old configuration still runs
    wait_for(lambda: len(hop_b.messages) == 2, "delivered after the refused reload", daemon)


def _check_sighup(daemon, tmp_path, hop_a, second):
    path = tmp_path / "meta1lite.conf"
    reloads = daemon.log().count("configuration reloaded")
    daemon.proc.send_signal(signal.SIGHUP)      # still the broken file: refused
    wait_for(lambda: daemon.log().count("reload of %s refused" % path) == 2, "SIGHUP refusal", daemon)
    path.write_text(second.replace(
        '"[127.0.0.1]:%d"' % daemon_route_port(second), '"[127.0.0.1]:%d"' % hop_a.port))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.log().count("configuration reloaded") == reloads + 1, "SIGHUP", daemon)
    before = len(hop_a.messages)
    _send_as_bob(daemon.port, 13)
    wait_for(lambda: len(hop_a.messages) == before + 1, "the route of the SIGHUP reload", daemon)


def daemon_route_port(text):
    start = text.index('"[127.0.0.1]:') + len('"[127.0.0.1]:')
    return int(text[start:text.index('"', start)])


# --- stop -----------------------------------------------------------------------------

STOPS = [("cpython", "SIGTERM"), ("cpython", "control"), ("micropython", "control")]


@pytest.mark.parametrize("runtime,how", STOPS, ids=["-".join(s) for s in STOPS])
def test_stop_says_421_exits_0_and_loses_nothing_acknowledged(runtime, how, tmp_path):
    count = 5
    with NextHop() as hop:
        hop.fail_next(1000)                     # everything stays queued
        daemon = start_relay(runtime, tmp_path, via(hop.port),
                             top="mcp { stop_timeout = %ds; }" % STOP_TIMEOUT_S)
        try:
            for n in range(count):
                send(daemon.port, "dev@home.test", ["u%d@dest.test" % n], message(n))
            with Client(daemon.port) as open_session:
                open_session.greeting_and_ehlo()
                assert open_session.cmd("MAIL FROM:<dev@home.test>").code == 250
                send(daemon.port, "dev@home.test", ["u%d@dest.test" % count], message(count))
                _stop(daemon, how)              # just after that 250
                r = _reply_or_log(open_session, daemon)
                assert (r.code, r.text[:5]) == (421, "4.3.2"), r
            assert daemon.proc.wait(timeout=STOP_TIMEOUT_S + EXIT_SLACK_S) == 0, daemon.log()
            assert "stopping (" in daemon.log() and "stopped" in daemon.log()
        finally:
            daemon.stop()
        hop.fail_next(0)
        (tmp_path / "again").mkdir()
        again = Daemon(runtime, tmp_path / "again", open(daemon.conf_path).read(), daemon.port)
        again.start()
        try:
            assert cli(again, "queue", "flush").returncode == 0
            wait_for(lambda: len(hop.messages) >= count + 1, "all delivered after the restart", again)
        finally:
            again.stop()
    assert sorted(m.rcpt_tos[0] for m in hop.messages) == sorted(
        "u%d@dest.test" % n for n in range(count + 1))


def _reply_or_log(session, daemon):
    # the 421 of the stop; if none comes, the daemon's log says why
    try:
        return session.reply()
    except (OSError, EOFError) as exc:
        raise AssertionError("no reply after the stop (%r); daemon %s; log:\n%s"
                             % (exc, "running" if daemon.proc.poll() is None else
                                "exited %s" % daemon.proc.returncode, daemon.log()[-6000:]))


def _stop(daemon, how):
    if how == "control":
        run = cli(daemon, "stop")
        assert run.returncode == 0 and "stopped" in run.stdout, run.stderr
    else:
        daemon.proc.send_signal(getattr(signal, how))


CTRL_C_ROUNDS = 4               # Ctrl-C at different points of a burst of deliveries
CTRL_C_MESSAGES = 12


def test_ctrl_c_ends_the_unix_port_at_once_and_loses_nothing(tmp_path):
    # The unix port raises Ctrl-C's KeyboardInterrupt out of whatever C code runs (a
    # collection, an allocation holding the GC mutex): `micropython -m meta1lite run`
    # lets SIGINT end the process at once, as SIGTERM does (meta1lite/__main__.py). It
    # must end at once wherever it lands, and the next start deliver all it acknowledged.
    # (A board's Ctrl-C, which mcp stops in order: tests/test_board_sim.py.)
    with NextHop() as hop:
        for round_no in range(CTRL_C_ROUNDS):
            work = tmp_path / ("r%d" % round_no)
            work.mkdir()
            daemon = start_relay("micropython", work, via(hop.port))
            numbers = range(round_no * CTRL_C_MESSAGES, (round_no + 1) * CTRL_C_MESSAGES)
            try:
                hop.fail_next(0)
                for n in numbers:
                    send(daemon.port, "dev@home.test", ["r%d@dest.test" % n], message(n))
                wait_for(lambda: len(_delivered(hop) & set(numbers)) >= 2 + round_no,
                         "deliveries", daemon)
                hop.fail_next(1000)             # what is left stays queued
                with Client(daemon.port) as open_session:
                    open_session.greeting_and_ehlo()
                    daemon.interrupt()
                    assert daemon.proc.wait(timeout=EXIT_SLACK_S) == -signal.SIGINT
                    with pytest.raises((OSError, EOFError)):
                        open_session.cmd("MAIL FROM:<dev@home.test>")
            finally:
                daemon.stop()
            hop.fail_next(0)
            (work / "again").mkdir()
            again = Daemon("micropython", work / "again", open(daemon.conf_path).read(),
                           daemon.port)
            again.start()
            try:
                assert cli(again, "queue", "flush").returncode == 0
                wait_for(lambda: set(numbers) <= _delivered(hop), "all delivered after the restart",
                         again)
            finally:
                again.stop()


def _delivered(hop):
    return {int(m.rcpt_tos[0][1:].split("@")[0]) for m in hop.messages}


# --- dropping root ----------------------------------------------------------------------

class _FakeOs:
    def __init__(self, uid):
        self.uid = uid
        self.calls = []

    def getuid(self):
        return self.uid

    def setgroups(self, groups):
        self.calls.append(("setgroups", groups))

    def setgid(self, gid):
        self.calls.append(("setgid", gid))

    def setuid(self, uid):
        self.calls.append(("setuid", uid))


class _FakePwd:
    class _Entry:
        pw_uid, pw_gid = 4242, 4343

    def getpwnam(self, name):
        if name != "meta1lite":
            raise KeyError(name)
        return self._Entry()


def test_drop_privileges_becomes_the_user_only_when_root():
    root = _FakeOs(0)
    assert process.drop_privileges("meta1lite", root, _FakePwd())
    assert root.calls == [("setgroups", []), ("setgid", 4343), ("setuid", 4242)]
    for user, fake in (("meta1lite", _FakeOs(1000)), (None, _FakeOs(0))):
        assert not process.drop_privileges(user, fake, _FakePwd()) and fake.calls == []
    with pytest.raises(OSError, match="mcp.user: no such user 'nobody-here'"):
        process.drop_privileges("nobody-here", _FakeOs(0), _FakePwd())


def test_listeners_are_bound_before_root_is_dropped_and_the_spool_opened_after(tmp_path, monkeypatch):
    port = free_port()
    cfg = conf.loads(config_text(str(tmp_path / "spool"), port, top_extra=(
        'control = 127.0.0.1:%d; mcp { user = "meta1lite"; }' % free_port())))
    seen = []
    daemon = mcp.Daemon(cfg)

    def drop(user):
        seen.append((user, daemon.smtps.endpoints(), daemon.spool))
        return False
    monkeypatch.setattr(process, "drop_privileges", drop)
    monkeypatch.setattr(process, "can_drop", lambda user: user == "meta1lite")

    async def go():
        await daemon.start()
        await daemon.stop()
    asyncio.run(go())
    assert seen == [("meta1lite", [("127.0.0.1", port)], None)]

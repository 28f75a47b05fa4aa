# sendmail, the queue tools and incoming/ against a second local user and root (from
# a review; each test failed on the code as reviewed). CPython-only driver; the daemon
# is the real one (tests/helpers/daemon.py). The tests that need a second user run
# only as root (they fork and become `nobody`; the interpreter under /root cannot be
# exec'd by another user here, so the child is a fork of this process).
import io
import os
import pwd
import shutil
import smtplib
import stat
import subprocess
import sys
import tempfile
import time

import pytest
from helpers.daemon import Daemon, config_text, free_port

from meta1lite import conf
from meta1lite.cli import queuetool, sendmail
from meta1lite.spool import Spool
from meta1lite.spool.lock import lock_spool

BIN = os.path.dirname(sys.executable)
KEEP = 'qmgr { retry_min = 1h; %s }\nsmar { route "*" { via = "[127.0.0.1]:1"; } }'
MESSAGE = b"Subject: hello\n\nline one\n"


def _nobody():
    if os.getuid() != 0:
        pytest.skip("needs root (to act as a second local user)")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")


def run_as(user, function):
    """function() in a forked child that became `user`: (exit status, its output)."""
    import meta1lite.spool.lock  # noqa: F401 - imported before the fork: no file reads as user
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                # the child: never back into pytest
        status = 70
        try:
            os.close(read_end)
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            sys.stdout = os.fdopen(1, "w", closefd=False)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            status = function()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException as exc:  # noqa: BLE001 - reported through the pipe
            os.write(2, ("child: %r\n" % (exc,)).encode())
        os._exit(status if isinstance(status, int) else 0)
    os.close(write_end)
    out = b""
    while True:
        data = os.read(read_end, 65536)
        if not data:
            break
        out += data
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode("utf-8", "replace")


@pytest.fixture
def shared_dir():
    """A work directory another local user can traverse (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="m1l-review-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def queued_messages(spool_path):
    spool = Spool(spool_path, 10 ** 9, 10 ** 5, 0)
    spool.recover(readonly=True)
    try:
        return [(m, b"".join(spool.read_body(m.id))) for m in spool.messages()]
    finally:
        spool.close()


def smtp_message(port, body):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("boss@example.org", ["hr@example.org"], body)


# --- 1. root's sendmail while the daemon (mcp.user) is down ----------------------------

def test_root_sendmail_while_the_daemon_is_down_does_not_lock_the_daemon_out(shared_dir):
    """mcp.user = nobody; the daemon is stopped; root's cron jobs run sendmail, which
    commits through the journal as root and creates the segments it needs as root
    (0644). The daemon, running as nobody, must still start and keep the mail."""
    user = _nobody()
    spool = os.path.join(shared_dir, "spool")
    os.mkdir(spool)
    os.chown(spool, user.pw_uid, user.pw_gid)      # README: chown -R meta1lite SPOOL
    port = free_port()
    text = config_text(spool, port, top_extra='mcp { user = "nobody"; }\n' + KEEP % "segment_size = 8K;")
    daemon = Daemon("cpython", shared_dir, text, port)
    daemon.start()
    daemon.stop()
    ids = []
    for i in range(6):                          # about 4K each: the 8K segments roll
        proc = subprocess.run([os.path.join(BIN, "meta1lite"), "-c", daemon.conf_path, "sendmail",
                               "-v", "a%d@example.org" % i],
                              input=b"Subject: %d\n\n" % i + b"x" * 70 + b"\n" * 1 + (b"y" * 70 + b"\n") * 55,
                              capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        ids.append(proc.stderr.decode().split("queued as ")[1].split()[0])
    try:
        daemon.start()          # listens before it drops root and opens the queue, so:
        assert wait_started(daemon), daemon.log()[-1500:]   # Permission denied: seg/0000000N
    finally:
        daemon.stop()
    assert sorted(m.id for m, _ in queued_messages(spool)) == sorted(ids)


def wait_started(daemon, timeout=15):
    """True once the daemon logged 'daemon started' (this run) and is still alive."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if daemon.proc.poll() is not None:
            return False
        if daemon.log().count("daemon started") >= 2:      # the first run's and this one's
            return True
        time.sleep(0.1)
    return False


def test_a_daemon_running_as_mcp_user_stops_with_exit_0(shared_dir):
    """design.md: a stop exits 0. With mcp.user the spool's lock (lock.d/pid) is taken
    as root and given back after dropping root: the release raises EACCES."""
    user = _nobody()
    spool = os.path.join(shared_dir, "spool")
    os.mkdir(spool)
    os.chown(spool, user.pw_uid, user.pw_gid)
    port = free_port()
    daemon = Daemon("cpython", shared_dir, config_text(spool, port, top_extra='mcp { user = "nobody"; }'), port)
    daemon.start()
    daemon.stop()
    assert daemon.proc.returncode == 0, daemon.log()[-1500:]
    assert not os.path.exists(os.path.join(spool, "lock.d"))


# --- 2. other local users ---------------------------------------------------------------

def test_another_local_user_cannot_read_queued_mail(shared_dir):
    """The spool is made with the umask's modes (dirs 0755, files 0644): every local
    user can read every queued message (`meta1lite queue show ID`, or the files)."""
    user = _nobody()
    spool = os.path.join(shared_dir, "spool")
    port = free_port()
    daemon = Daemon("cpython", shared_dir, config_text(spool, port, top_extra=KEEP % ""), port)
    os.chmod(daemon.conf_path, 0o644)
    with daemon:
        smtp_message(port, b"Subject: salaries\r\n\r\nSECRET-PAYLOAD\r\n")
        [(msg, _body)] = queued_messages(spool)
        cfg = conf.load(daemon.conf_path)
        status, out = run_as(user, lambda: queuetool.main(cfg, ["show", msg.id]))
    assert "SECRET-PAYLOAD" not in out, out
    assert status != 0


def test_an_older_spool_is_made_private_when_its_lock_is_taken(tmp_path):
    """A spool made before files were private keeps 0755 folders and 0644 files: its
    queued mail stayed readable by every local user after an upgrade."""
    spool = tmp_path / "spool"
    (spool / "seg").mkdir(parents=True)
    (spool / "seg" / "000001").write_bytes(b"SECRET-PAYLOAD")
    os.chmod(str(spool), 0o755)
    os.chmod(str(spool / "seg" / "000001"), 0o644)
    lock = lock_spool(str(spool))
    try:
        assert stat.S_IMODE(os.stat(str(spool)).st_mode) == 0o700
    finally:
        lock.release()
    shared = tmp_path / "shared"            # spool = "/tmp": a mistake, never a chmod
    (shared / "seg").mkdir(parents=True)
    os.chmod(str(shared), 0o1777)
    lock_spool(str(shared)).release()
    assert stat.S_IMODE(os.stat(str(shared)).st_mode) == 0o1777


# --- 2b. what reaches the next hop ------------------------------------------------------

def _inject_in_process(tmp_path, argv, data):
    path = tmp_path / "meta1lite.conf"
    path.write_text(config_text(str(tmp_path / "spool"), free_port(),
                                top_extra="control = 127.0.0.1:%d;\n" % free_port() + KEEP % ""))
    return sendmail.main(conf.load(str(path)), argv, stdin=io.BytesIO(data))


def test_dash_capital_f_puts_no_bare_cr_or_lf_into_the_message(tmp_path):
    """sendmail.py: 'Must never ... pass on a bare CR (SMTP smuggling)'. The -F name
    goes into From: as given: a bare CR (not dot-stuffed by smtpc: `\\r.\\r`) and LF."""
    status = _inject_in_process(tmp_path, ["-f", "me@home.test", "-F", "Evil\r.\rX\nBcc: y",
                                           "a@example.org"], MESSAGE)
    if status == 0:
        [(_msg, body)] = queued_messages(str(tmp_path / "spool"))
        assert b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b""), body
    else:
        assert status == 64


# --- 3. errors ----------------------------------------------------------------------------

def test_a_dash_capital_f_that_is_not_utf8_is_a_usage_error(tmp_path):
    """A Latin-1 full name (-F from a cron job's environment) ends in a traceback, exit 1."""
    path = tmp_path / "meta1lite.conf"
    path.write_text(config_text(str(tmp_path / "spool"), free_port(),
                                top_extra="control = 127.0.0.1:%d;\n" % free_port()))
    proc = subprocess.run([os.path.join(BIN, "meta1lite").encode(), b"-c", str(path).encode(),
                           b"sendmail", b"-F", b"Caf\xe9", b"a@example.org"],
                          input=MESSAGE, capture_output=True, timeout=60)
    assert proc.returncode == 64, proc.stderr.decode()[-600:]
    assert proc.stderr.startswith(b"sendmail: ") and b"Traceback" not in proc.stderr


def test_dash_t_refuses_a_recipient_field_that_is_not_utf8(tmp_path):
    """README: addresses are checked as strict UTF-8. With -t, To: caf\\xe9@example.org is
    decoded with 'replace' and queued to caf\\ufffd@example.org (exit 0): another address."""
    status = _inject_in_process(tmp_path, ["-t"], b"Subject: x\nTo: caf\xe9@example.org\n\nbody\n")
    queued = [m.recipients[0].addr for m, _ in queued_messages(str(tmp_path / "spool"))] \
        if os.path.exists(str(tmp_path / "spool")) else []
    assert status == 65, queued
    assert queued == []


# --- 1b. incoming/ -------------------------------------------------------------------------

def test_an_inject_refused_for_space_leaves_no_temporary(tmp_path):
    """Recovery.inject (sendmail's incoming/ path) removes its temporary on OSError only:
    a SpoolFull (low space) leaves the partial tmp/ID until the daemon's next start,
    one more per retry, on a file system that is already short of space."""
    from meta1lite.spool.message import SpoolFull
    spool_dir = str(tmp_path / "spool")
    other = Spool(spool_dir, 10 ** 9, 1000, 10 ** 15)      # min_free_space: more than any disk
    with pytest.raises(SpoolFull):
        other.inject("root@host", ["u@x.example"], [b"x" * 5000])
    assert os.listdir(spool_dir + "/tmp") == []

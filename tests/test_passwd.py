# `meta1lite passwd USER` (CPython CLI): the users file named by smtps.auth.users gets
# a PBKDF2-SHA256 line that AUTH accepts, mode 0600, other users kept.
import os
import stat
import subprocess
import sys

from helpers.daemon import config_text

from meta1lite.smtps import authdb

METALITE = os.path.join(os.path.dirname(sys.executable), "meta1lite")


def setup(tmp_path, auth=True):
    users = tmp_path / "users"
    extra = 'auth { users = "%s"; }' % users if auth else ""
    path = tmp_path / "meta1lite.conf"
    path.write_text(config_text(str(tmp_path / "spool"), 2525, smtps_extra=extra))
    return str(path), users


def passwd(conf_path, user, password):
    return subprocess.run([METALITE, "-c", conf_path, "passwd", user], input=password,
                          capture_output=True, timeout=60)


def users_of(path):
    return authdb.parse_users(path.read_text())


def test_new_user_gets_a_pbkdf2_line_mode_0600(tmp_path):
    conf_path, users = setup(tmp_path)
    proc = passwd(conf_path, "alice", b"s3cret pass\n")
    assert proc.returncode == 0, proc.stderr
    stored = users_of(users)["alice"]
    assert stored.startswith("pbkdf2-sha256$")
    assert authdb.verify_password(stored, "s3cret pass")
    assert not authdb.verify_password(stored, "s3cret pass\n")
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600
    assert b"s3cret" not in proc.stdout + proc.stderr


def test_changing_a_password_keeps_the_other_users(tmp_path):
    conf_path, users = setup(tmp_path)
    users.write_text("# devices\nbob:%s\n" % authdb.hash_password("bobpw", iterations=2))
    os.chmod(users, 0o644)
    assert passwd(conf_path, "alice", b"first\n").returncode == 0
    assert passwd(conf_path, "alice", b"second\n").returncode == 0
    found = users_of(users)
    assert sorted(found) == ["alice", "bob"]
    assert authdb.verify_password(found["bob"], "bobpw")
    assert authdb.verify_password(found["alice"], "second")
    assert not authdb.verify_password(found["alice"], "first")
    assert "# devices" in users.read_text()
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600
    assert [n for n in os.listdir(tmp_path) if n.startswith(".users")] == []   # no temporaries left


def test_without_auth_configured_exit_2_with_a_message(tmp_path):
    conf_path, users = setup(tmp_path, auth=False)
    proc = passwd(conf_path, "alice", b"pw\n")
    assert proc.returncode == 2
    assert b"auth" in proc.stderr.lower() and b"users" in proc.stderr
    assert not users.exists()


def test_refusals_change_nothing(tmp_path):
    conf_path, users = setup(tmp_path)
    assert passwd(conf_path, "alice", b"\n").returncode == 1            # empty password
    assert passwd(conf_path, "a:b", b"pw\n").returncode == 1            # bad user name
    assert not users.exists()
    proc = subprocess.run([METALITE, "-c", conf_path, "passwd"], capture_output=True, timeout=60)
    assert proc.returncode == 2

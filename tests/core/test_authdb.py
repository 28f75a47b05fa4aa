# AUTH users file and PBKDF2 on both runtimes (RFC 7914 s.11 / RFC 6070-style vectors).
import binascii

from support import raises

from meta1lite import compat
from meta1lite.smtps import authdb


def test_pbkdf2_sha256_matches_published_vectors():
    # RFC 7914 section 11 (PBKDF2-HMAC-SHA256 test vectors)
    out = authdb.pbkdf2_sha256(b"passwd", b"salt", 1, 64)
    assert binascii.hexlify(out)[:32] == b"55ac046e56e3089fec1691c22544b605"
    out = authdb.pbkdf2_sha256(b"password", b"salt", 4096, 32)
    assert binascii.hexlify(out) == \
        b"c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"


def test_long_key_is_hashed_first():
    a = authdb.pbkdf2_sha256(b"k" * 100, b"s", 2)
    assert len(a) == 32 and a != authdb.pbkdf2_sha256(b"k" * 99, b"s", 2)


def test_hash_and_verify_round_trip_with_random_salt():
    stored = authdb.hash_password("s3cret", iterations=50)
    assert stored.startswith("pbkdf2-sha256$50$")
    assert authdb.verify_password(stored, "s3cret")
    assert not authdb.verify_password(stored, "s3cret ")
    assert not authdb.verify_password(stored, "")
    assert authdb.hash_password("s3cret", 50) != stored      # salted
    assert not authdb.verify_password("plain:text", "plain")


def test_users_file_parse_set_and_errors():
    text = "# users\nalice:%s\n" % authdb.hash_password("a", 10)
    text = authdb.set_user(text, "bob", authdb.hash_password("b", 10))
    text = authdb.set_user(text, "alice", authdb.hash_password("new", 10))
    users = authdb.parse_users(text)
    assert sorted(users) == ["alice", "bob"]
    assert authdb.verify_password(users["alice"], "new")
    err = raises(authdb.AuthFileError, authdb.parse_users, "ok:x\n", "users.txt")
    assert "users.txt:1:" in str(err)
    raises(ValueError, authdb.set_user, "", "a:b", "x")


def test_lockout_after_max_failures_and_expiry():
    now = [0.0]
    compat.set_clock(lambda: now[0])
    try:
        lock = authdb.Lockout(max_failures=3, lockout_s=600)
        for _ in range(3):
            assert not lock.locked("192.0.2.1")
            lock.failed("192.0.2.1")
        assert lock.locked("192.0.2.1")
        assert not lock.locked("192.0.2.2")
        now[0] += 601
        assert not lock.locked("192.0.2.1")
        lock.failed("192.0.2.3")
        lock.succeeded("192.0.2.3")
        assert "192.0.2.3" not in lock.failures
    finally:
        compat.set_clock()

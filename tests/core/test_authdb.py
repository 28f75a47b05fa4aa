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


def test_lockout_window_slides_with_each_failure():
    # failures spread over more than one window, each within `lockout` of the last
    now = [0.0]
    compat.set_clock(lambda: now[0])
    try:
        lock = authdb.Lockout(max_failures=3, lockout_s=600)
        for _ in range(3):
            assert not lock.locked("192.0.2.1")
            lock.failed("192.0.2.1")
            now[0] += 500
        assert lock.locked("192.0.2.1")
        now[0] += 101
        assert not lock.locked("192.0.2.1")     # 601 s after the latest failure
        lock.failed("192.0.2.4")
        now[0] += 601
        assert lock.failed("192.0.2.4") == 1    # the old one is out of the window
    finally:
        compat.set_clock()


def _ticking(coro):
    # (result of coro, how often another task ran meanwhile)
    ticks = [0]
    done = []

    async def ticker():
        while not done:
            ticks[0] += 1
            await compat.asyncio.sleep(0)

    async def main():
        task = compat.asyncio.create_task(ticker())
        result = await coro
        done.append(1)
        await task
        return result
    return compat.asyncio.run(main()), ticks[0]


def test_derivation_yields_to_the_event_loop_and_matches():
    iterations = 4 * authdb.SLICE_ITERATIONS
    want = authdb.pbkdf2_sha256(b"pw", b"salt", iterations)
    got, ticks = _ticking(authdb.pbkdf2_sha256_async(b"pw", b"salt", iterations))
    assert got == want
    assert ticks >= (1 if compat.HAS_THREADS else 3), ticks    # a thread, or 4 slices


def test_unknown_users_cost_a_derivation_too():
    stored = authdb.hash_password("right", 300)
    users = {"alice": stored}
    dummy = authdb.dummy_hash(users)
    assert dummy.split("$")[1] == "300"
    calls = []
    real = authdb.pbkdf2_sha256_async

    async def counting(*args):
        calls.append(args[2])
        return await real(*args)
    authdb.pbkdf2_sha256_async = counting
    try:
        assert _ticking(authdb.verify_user(users, dummy, "alice", "right"))[0]
        assert not _ticking(authdb.verify_user(users, dummy, "alice", "wrong"))[0]
        assert not _ticking(authdb.verify_user(users, dummy, "mallory", "right"))[0]
        assert not _ticking(authdb.verify_user(None, dummy, "alice", "right"))[0]
    finally:
        authdb.pbkdf2_sha256_async = real
    assert calls == [300, 300, 300, 300], calls

# meta1lite.smtps.authdb - the AUTH users file: salted PBKDF2-HMAC-SHA256 password hashes.
#
# Owns: the users-file format, hashing (PBKDF2 built on sha256, because MicroPython's
# hashlib has no pbkdf2_hmac or hmac), verification in constant time, and the
# per-client failure counter with lockout. Must never: log or keep a password, or
# tell apart "no such user" from "wrong password" to a client.
#
# File format, one user per line ('#' comments and blank lines ignored):
#     USER:pbkdf2-sha256$ITERATIONS$SALT_BASE64$HASH_BASE64
import binascii
import hashlib

from meta1lite import compat
from meta1lite.const import const

_SCHEME = const("pbkdf2-sha256")
_DEFAULT_ITERATIONS = const(4096)  # a Pico W verifies this in well under a second
_SALT_BYTES = const(16)
_HASH_BYTES = const(32)
_BLOCK = const(64)               # SHA-256 block size
MAX_USERS = const(200)           # a users file longer than this is a configuration error
MAX_LINE = const(512)
SLICE_ITERATIONS = const(64)     # PBKDF2 iterations between yields to the event loop


class AuthFileError(ValueError):
    """A users file that cannot be read, with FILE:LINE in the message."""


def _sha256(data):
    return hashlib.sha256(data).digest()


def _xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


class _HmacSha256:
    """HMAC-SHA256 with the key's inner and outer pads prepared once."""

    def __init__(self, key):
        if len(key) > _BLOCK:
            key = _sha256(key)
        key = key + b"\x00" * (_BLOCK - len(key))
        self.ipad = bytes(k ^ 0x36 for k in key)
        self.opad = bytes(k ^ 0x5C for k in key)

    def digest(self, msg):
        return _sha256(self.opad + _sha256(self.ipad + msg))


def _pbkdf2_slices(password, salt, iterations, length):
    """PBKDF2-HMAC-SHA256 (RFC 8018) as a generator: None every SLICE_ITERATIONS
    iterations (a place to yield to the event loop), then the derived key."""
    prf = _HmacSha256(password)
    out = b""
    block = 1
    while len(out) < length:
        u = prf.digest(salt + block.to_bytes(4, "big"))
        acc = int.from_bytes(u, "big")
        for n in range(1, iterations):
            if n % SLICE_ITERATIONS == 0:
                yield None
            u = prf.digest(u)
            acc ^= int.from_bytes(u, "big")
        out += acc.to_bytes(_HASH_BYTES, "big")
        block += 1
    yield out[:length]


def pbkdf2_sha256(password, salt, iterations, length=_HASH_BYTES):
    """PBKDF2-HMAC-SHA256 (RFC 8018); identical to hashlib.pbkdf2_hmac('sha256', ...)."""
    for key in _pbkdf2_slices(password, salt, iterations, length):
        pass
    return key


async def pbkdf2_sha256_async(password, salt, iterations, length=_HASH_BYTES):
    """pbkdf2_sha256 without blocking the event loop: in a thread where the runtime
    has them (hashlib's own PBKDF2 if present), else in slices that yield."""
    if compat.HAS_THREADS:
        return await compat.in_thread(_pbkdf2_fast, password, salt, iterations, length)
    for key in _pbkdf2_slices(password, salt, iterations, length):
        if key is None:
            await compat.asyncio.sleep(0)
    return key


def _pbkdf2_fast(password, salt, iterations, length):
    fast = getattr(hashlib, "pbkdf2_hmac", None)
    if fast is None:
        return pbkdf2_sha256(password, salt, iterations, length)
    return fast("sha256", password, salt, iterations, length)


def _b64(data):
    return binascii.b2a_base64(data).strip().decode()


def hash_password(password, iterations=_DEFAULT_ITERATIONS, salt=None):
    """The stored form of a password: 'pbkdf2-sha256$N$salt$hash'."""
    if isinstance(password, str):
        password = password.encode()
    salt = salt or compat.urandom(_SALT_BYTES)
    digest = pbkdf2_sha256(password, salt, iterations)
    return "%s$%d$%s$%s" % (_SCHEME, iterations, _b64(salt), _b64(digest))


def _equal(a, b):
    diff = len(a) ^ len(b)
    for x, y in zip(a, b):
        diff |= x ^ y
    return diff == 0


def _parse(stored):
    # (iterations, salt, hash) of a stored hash, or None if malformed
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != _SCHEME:
        return None
    try:
        return int(parts[1]), binascii.a2b_base64(parts[2]), binascii.a2b_base64(parts[3])
    except (ValueError, binascii.Error):
        return None


def _encode(password):
    return password.encode() if isinstance(password, str) else password


def verify_password(stored, password):
    """True if `password` matches the stored hash (constant-time comparison)."""
    parsed = _parse(stored)
    if parsed is None:
        return False
    iterations, salt, want = parsed
    return _equal(pbkdf2_sha256(_encode(password), salt, iterations, len(want)), want)


def dummy_hash(users):
    """A stored hash nobody's password matches, costing what the users' hashes cost:
    verified for unknown users so that timing does not tell which users exist."""
    iterations = _DEFAULT_ITERATIONS
    for stored in (users or {}).values():
        parsed = _parse(stored)
        if parsed is not None:
            iterations = parsed[0]
            break
    return "%s$%d$%s$%s" % (_SCHEME, iterations, _b64(compat.urandom(_SALT_BYTES)),
                            _b64(compat.urandom(_HASH_BYTES)))


async def verify_user(users, dummy, user, password):
    """True if user is in users and password matches; always derives (against dummy
    for an unknown user), without blocking the event loop."""
    stored = users.get(user) if users else None
    parsed = _parse(stored if stored is not None else dummy)
    if parsed is None:
        return False
    iterations, salt, want = parsed
    got = await pbkdf2_sha256_async(_encode(password), salt, iterations, len(want))
    return _equal(got, want) and stored is not None


def parse_users(text, filename="<users>"):
    """{user: stored hash} from a users file's text; AuthFileError on bad lines."""
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or not stored.startswith(_SCHEME + "$") or len(line) > MAX_LINE:
            raise AuthFileError("%s:%d: expected USER:%s$N$SALT$HASH" % (filename, number, _SCHEME))
        if len(users) >= MAX_USERS:
            raise AuthFileError("%s:%d: more than %d users" % (filename, number, MAX_USERS))
        users[user] = stored
    return users


def load_users(path):
    """Read a users file; AuthFileError with the file name if unreadable."""
    try:
        with open(path) as f:
            return parse_users(f.read(), path)
    except OSError as exc:
        raise AuthFileError("%s: cannot read users file: %s" % (path, exc))


def set_user(text, user, stored):
    """The users file's text with `user` added or its hash replaced."""
    if ":" in user or not user or "\n" in user:
        raise ValueError("bad user name %r" % user)
    kept = [line for line in text.splitlines() if line.partition(":")[0].strip() != user]
    kept.append("%s:%s" % (user, stored))
    return "\n".join(kept) + "\n"


class Lockout:
    """Failed-AUTH counter per client address: max_failures failures, each within
    `lockout` s of the one before (a sliding window), lock it for `lockout` s after
    the latest."""

    def __init__(self, max_failures, lockout_s, max_clients=256):
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.max_clients = max_clients
        self.failures = {}          # client -> [count, latest failure time]

    def locked(self, client):
        """True while `client` is locked out."""
        entry = self.failures.get(client)
        if entry is None:
            return False
        if compat.monotonic() - entry[1] > self.lockout_s:
            del self.failures[client]
            return False
        return entry[0] >= self.max_failures

    def failed(self, client):
        """Count one failure; returns the number of failures so far."""
        entry = self.failures.get(client)
        if entry is None:
            if len(self.failures) >= self.max_clients:
                self._forget_oldest()
            entry = self.failures[client] = [0, compat.monotonic()]
        elif compat.monotonic() - entry[1] > self.lockout_s:
            entry[0] = 0            # the previous failures are out of the window
        entry[0] += 1
        entry[1] = compat.monotonic()
        return entry[0]

    def succeeded(self, client):
        """Forget the failures of a client that authenticated."""
        self.failures.pop(client, None)

    def _forget_oldest(self):
        oldest = min(self.failures, key=lambda c: self.failures[c][1])
        del self.failures[oldest]

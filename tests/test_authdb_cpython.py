# The board's PBKDF2 gives the same bytes as hashlib.pbkdf2_hmac (CPython).
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from meta1lite.smtps import authdb


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=100), st.binary(max_size=40), st.integers(1, 40), st.integers(1, 80))
def test_pbkdf2_identical_to_hashlib(password, salt, iterations, length):
    assert authdb.pbkdf2_sha256(password, salt, iterations, length) == \
        hashlib.pbkdf2_hmac("sha256", password, salt, iterations, length)

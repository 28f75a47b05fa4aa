# Received:/Date:/Message-ID: handling, on both runtimes.
from meta1lite import headers


def feed_all(scanner, chunks):
    out = b""
    for chunk in chunks:
        got = scanner.feed(chunk)
        if got is not None:
            out += got
    return out + scanner.finish()


def test_received_field_is_postfix_shaped():
    field = headers.received_field("relay.test", "cam1", None, "192.168.1.9", "4BQX0A1B2C3D",
                                   "ESMTP", "ops@example.org", when=0)
    assert field == (b"Received: from cam1 (unknown [192.168.1.9])\r\n"
                     b"\tby relay.test (meta1lite) with ESMTP id 4BQX0A1B2C3D\r\n"
                     b"\tfor <ops@example.org>; Thu, 1 Jan 1970 00:00:00 +0000\r\n")


def test_scanner_finds_fields_across_chunk_boundaries():
    msg = b"From: a@b\r\nDa", b"te: x\r\nMessage-Id:  <1@b>\r\n", b"\r\nbody\r\n"
    s = headers.HeaderScanner()
    assert feed_all(s, msg) == b"".join(msg)
    assert sorted(s.present) == [b"date", b"from", b"message-id"]
    assert s.message_id == "<1@b>"


def test_a_message_id_is_logged_without_control_or_escape_bytes():
    # it goes into the log line: no terminal escape, no NEL, no 8-bit trick
    s = headers.HeaderScanner()
    feed_all(s, (b"Message-ID: <1\x1b[2J@b\xc2\x85x>\r\n\r\n",))
    assert s.message_id == "<1?[2J@b??x>", s.message_id


def test_scanner_ignores_body_and_continuation_lines():
    s = headers.HeaderScanner()
    feed_all(s, [b"Subject: hi\r\n Date: folded\r\n\r\nDate: in body\r\n"])
    assert s.present == []
    extra = headers.missing_fields(s.present, "relay.test", "ID1", when=0)
    assert extra == (b"Date: Thu, 1 Jan 1970 00:00:00 +0000\r\n"
                     b"Message-ID: <0.ID1@relay.test>\r\n")


def test_scanner_gives_up_quietly_on_huge_headers():
    s = headers.HeaderScanner()
    big = b"X-Junk: " + b"x" * (headers.HEADER_SCAN_LIMIT + 10) + b"\r\n"
    assert feed_all(s, [big, b"\r\nbody"]) == big + b"\r\nbody"
    assert headers.missing_fields(s.present, "h", "q") == b""


def test_message_that_is_all_header_is_released_at_finish():
    s = headers.HeaderScanner()
    assert s.feed(b"Subject: only\r\n") is None
    assert s.finish() == b"Subject: only\r\n"
    assert b"date" not in s.present


def test_scanner_passes_a_first_chunk_holding_the_whole_header_without_copying():
    # delivery on a board: the first DATA chunk is the session's reused buffer;
    # a copy of it per message (1K) was what failed on a fragmented 120K heap
    for kind in (bytes, bytearray):
        chunk = kind(b"Date: x\r\nMessage-ID: <7@b>\r\n\r\nbody\r\n")
        s = headers.HeaderScanner()
        assert s.feed(chunk) is chunk
        assert sorted(s.present) == [b"date", b"message-id"] and s.message_id == "<7@b>"
        assert s.feed(b"more\r\n") == b"more\r\n" and s.finish() == b""
    s = headers.HeaderScanner()
    assert s.feed(bytearray(b"\r\nbody\r\n")) == b"\r\nbody\r\n" and s.present == []

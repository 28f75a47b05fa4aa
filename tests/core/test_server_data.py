# Unit tests of meta1lite.proto.server_data: the fast path of DataReader.read() (runs
# of ordinary lines) gives what the per-line path gives, for inputs cut anywhere.
# Shared subset: runs under CPython (pytest) and the MicroPython unix port.
from meta1lite.proto import server_data as D

ATOMS = (b"hello world\r\n",) * 6 + (b"a", b"xyz", b"\r\n", b"\r", b"\n", b".", b"\r\n.",
                                    b"\r\n.\r\n", b"b" * 50, b"c" * 300)
ENDS = (b"\r\n.\r\n", b".\r\n", b"")


class Rand:
    """A small LCG (the same numbers on both runtimes)."""

    def __init__(self, seed):
        self.x = seed

    def below(self, n):
        self.x = (self.x * 1103515245 + 12345) % 2147483648
        return (self.x >> 8) % n


def _read_all(data, cuts, opts, fast):
    saved, D.FAST_TRIES = D.FAST_TRIES, (D.FAST_TRIES if fast else 0)
    try:
        reader = D.DataReader(*opts)
        buf, pos, got, fed = bytearray(), 0, [], 0
        for cut in cuts + [len(data)]:
            buf.extend(data[fed:cut])
            fed = cut
            while not reader.finished:
                chunk = bytes(reader.read(buf, pos))
                got.append(chunk)
                if reader.pos == pos and not chunk:
                    break
                pos = reader.pos
        return b"".join(got), reader.finished, reader.error, reader.size, pos
    finally:
        D.FAST_TRIES = saved


def test_fast_path_matches_the_per_line_path():
    rnd = Rand(7)
    for _ in range(1000):
        data = b"".join(ATOMS[rnd.below(len(ATOMS))] for _ in range(rnd.below(40))) + ENDS[rnd.below(3)]
        cuts = sorted(rnd.below(len(data) + 1) for _ in range(rnd.below(4)))
        opts = ((20, 100, 1000)[rnd.below(3)], (0, 200, 5000)[rnd.below(3)],
                D.BARE_LF_MODES[rnd.below(2)], (16, 64, 4096)[rnd.below(3)])
        fast = _read_all(data, cuts, opts, True)
        assert fast == _read_all(data, cuts, opts, False), (data, cuts, opts)


def test_fast_path_takes_clean_lines_as_one_run():
    reader = D.DataReader(1000, 0, D.BARE_LF_REJECT, 4096)
    buf = bytearray(b"line one\r\nline two\r\n..dot\r\n.\r\n")
    assert bytes(reader.read(buf, 0)) == b"line one\r\nline two\r\n.dot\r\n"
    assert reader.finished and reader.size == 26

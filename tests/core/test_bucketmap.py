# BucketMap behaves like the dict it replaces in the queue manager.
from meta1lite.qmgr.bucketmap import BucketMap


def test_bucketmap_is_a_small_dict():
    m = BucketMap(4)
    for n in range(100):
        m["Q%03d" % n] = n
    assert len(m) == 100 and m["Q042"] == 42 and "Q099" in m and "Q100" not in m
    assert m.get("nope", 7) == 7 and m.pop("Q001") == 1 and m.pop("Q001") is None
    assert sorted(m) == sorted("Q%03d" % n for n in range(100) if n != 1)
    assert dict(m.items())["Q042"] == 42 and len(list(m.items())) == 99
    for key in m:                       # deleting while iterating is safe
        m.pop(key)
    assert len(m) == 0


def test_bucketmap_grows_its_buckets_and_iterates_through_a_growth():
    m = BucketMap(4, 64)
    for n in range(600):
        m["Q%04d" % n] = n
    assert len(m.buckets) == 64 and len(m) == 600
    assert all(len(b) < 40 for b in m.buckets)      # no bucket grows with the table
    assert sorted(m) == ["Q%04d" % n for n in range(600)] and m["Q0599"] == 599
    m = BucketMap(2, 8)
    for n in range(64):
        m["A%d" % n] = n
    seen = []
    for key, value in m.items():        # a growth meanwhile: the walk goes on
        seen.append(key)
        if len(seen) == 1:
            for n in range(64):
                m["B%d" % n] = n
    assert len(seen) == 64 and len(m.buckets) == 8 and len(m) == 128
    assert m.pop("A3") == 3 and len(m) == 127 and m.pop("A3", "gone") == "gone"

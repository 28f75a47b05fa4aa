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

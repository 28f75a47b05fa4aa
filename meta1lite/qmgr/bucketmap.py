# meta1lite.qmgr.bucketmap - a dict split into small dicts, for per-message tables.
#
# Owns: BucketMap. One dict of a thousand entries needs one contiguous block of
# ~32 KB on every resize, which a fragmented MicroPython heap cannot give (the
# queue manager died that way with 380 queued messages on a 1 MB heap); small
# buckets grow in small steps, and the number of buckets grows with the entries
# (x4 past _PER_BUCKET entries a bucket on average, up to _MAX_BUCKETS) so that a
# bucket stays small for a queue of thousands. Must never: hold anything but what
# callers put in, or fail a write because a growth found no memory.
# An empty map has one bucket, and the first growth comes at _PER_BUCKET entries: the
# queue manager's four maps, with 16 empty buckets each, held 1.2K of a board's heap.
from meta1lite.const import const

BUCKETS = const(1)
_PER_BUCKET = const(32)         # average entries per bucket before the buckets grow
_MAX_BUCKETS = const(256)
_GROWTH = const(4)


class BucketMap:
    """A mapping with the dict operations the queue manager uses."""

    def __init__(self, buckets=BUCKETS, max_buckets=_MAX_BUCKETS):
        self.buckets = [{} for _ in range(buckets)]
        self.max_buckets = max(buckets, max_buckets)
        self.count = 0

    def _bucket(self, key):
        return self.buckets[hash(key) % len(self.buckets)]

    def __getitem__(self, key):
        return self._bucket(key)[key]

    def __setitem__(self, key, value):
        bucket = self._bucket(key)
        if key in bucket:
            bucket[key] = value
            return
        if self.count >= _PER_BUCKET * len(self.buckets) and self._grow():
            bucket = self._bucket(key)
        bucket[key] = value
        self.count += 1

    def _grow(self):
        # a new list of buckets, filled before it replaces the old one: a MemoryError
        # leaves the map as it was (and a growth is tried again at the next write);
        # an iteration in progress goes on over the old buckets, left untouched
        n = min(self.max_buckets, len(self.buckets) * _GROWTH)
        if n <= len(self.buckets):
            return False
        try:
            new = [{} for _ in range(n)]
            for bucket in self.buckets:
                for key in bucket:
                    new[hash(key) % n][key] = bucket[key]
        except MemoryError:
            return False
        self.buckets = new
        return True

    def __contains__(self, key):
        return key in self._bucket(key)

    def __len__(self):
        return self.count

    def __iter__(self):
        for bucket in self.buckets:
            for key in list(bucket):
                yield key

    def items(self):
        """(key, value) pairs, over a snapshot of each bucket."""
        for bucket in self.buckets:
            for key in list(bucket):
                if key in bucket:
                    yield key, bucket[key]

    def get(self, key, default=None):
        """The value of key, or default."""
        return self._bucket(key).get(key, default)

    def pop(self, key, default=None):
        """Remove key; its value, or default."""
        bucket = self._bucket(key)
        if key not in bucket:
            return default
        self.count -= 1
        return bucket.pop(key)

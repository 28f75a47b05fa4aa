# meta1lite.qmgr.bucketmap - a dict split into small dicts, for per-message tables.
#
# Owns: BucketMap. One dict of a thousand entries needs one contiguous block of
# ~32 KB on every resize, which a fragmented MicroPython heap cannot give (the
# queue manager died that way with 380 queued messages on a 1 MB heap); small
# buckets grow in small steps. Must never: hold anything but what callers put in.
BUCKETS = 16


class BucketMap:
    """A mapping with the dict operations the queue manager uses."""

    def __init__(self, buckets=BUCKETS):
        self.buckets = [{} for _ in range(buckets)]

    def _bucket(self, key):
        return self.buckets[hash(key) % len(self.buckets)]

    def __getitem__(self, key):
        return self._bucket(key)[key]

    def __setitem__(self, key, value):
        self._bucket(key)[key] = value

    def __contains__(self, key):
        return key in self._bucket(key)

    def __len__(self):
        return sum(len(b) for b in self.buckets)

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
        return self._bucket(key).pop(key, default)

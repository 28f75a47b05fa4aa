# tests/helpers/shim_daemon.py - the daemon with counting shims on its commit primitives, for
# the order proof of "250 means durable" (tests/test_durability.py, test_sendmail.py).
#
# Run exactly like the daemon, on either runtime:
#     python tests/helpers/shim_daemon.py run -c FILE
#     MICROPYPATH=<bundle>:.frozen micropython tests/helpers/shim_daemon.py run -c FILE
# With $META1LITE_SHIM_TRACE set, appends one line per event to that file:
#     SYNC <n> file <fid>        durable.fsync_file(f) returned (fid = id(f))
#     SYNC <n> dir <path>        durable.sync_dir(path) synced a directory
#     APPEND C|E <tag> <fid>     Journal.append wrote a chunk / envelope frame to file fid
#     COMMIT-START <queue id>    Spool.commit entered
#     COMMIT-END <queue id>      Spool.commit returned
#     ACK <queue id>             a "250 2.0.0 ... queued as ID" reply is handed to the socket
#     ADOPT <queue id>           Spool.scan_incoming adopted a message from incoming/
# then runs the normal entry point (meta1lite.__main__.main). Written in the shared
# subset (no f-strings etc.): it runs under MicroPython from the .mpy bundle too.
# Must never change what the daemon does: every wrapper calls the original.
import sys

TRACE_ENV = "META1LITE_SHIM_TRACE"
QUEUED = b"250 2.0.0"
MARK = b"queued as "


def _add_source_tree():
    """CPython without an installed meta1lite: the tree above tests/helpers/ (appended, so the
    .mpy bundle that MICROPYPATH puts first keeps winning under MicroPython)."""
    script = sys.argv[0]
    tests_dir = script.rsplit("/", 1)[0] if "/" in script else "."
    sys.path.append(tests_dir + "/../..")


class Trace:
    """Unbuffered appends of event lines (one write() per line, O_APPEND)."""

    def __init__(self, path):
        try:
            self.f = open(path, "ab", buffering=0)
        except TypeError:
            self.f = open(path, "ab")
        self.syncs = 0
        try:                        # CPython fsyncs in a worker thread too (syncthread)
            import _thread
            self.lock = _thread.allocate_lock()
        except ImportError:
            self.lock = None

    def next_sync(self):
        if self.lock is None:
            self.syncs += 1
            return self.syncs
        with self.lock:
            self.syncs += 1
            return self.syncs

    def event(self, text):
        self.f.write((text + "\n").encode())


def _wrap_io(trace, durable, streams):
    fsync_file, sync_dir, write_within = durable.fsync_file, durable.sync_dir, streams.write_within

    def counted_fsync(f):
        # SYNC-BEGIN before: an append logged after it is not covered by this fsync,
        # even though the SYNC line (when it returned) comes after that append
        n = trace.next_sync()
        trace.event("SYNC-BEGIN %d file %d" % (n, id(f)))
        fsync_file(f)
        trace.event("SYNC %d file %d" % (n, id(f)))

    def counted_sync_dir(path):
        done = sync_dir(path)
        if done:
            trace.event("SYNC %d dir %s" % (trace.next_sync(), path))
        return done

    async def traced_write_within(writer, data, timeout_s):
        # how smtps writes its replies
        blob = bytes(data)
        if QUEUED in blob:
            for line in blob.split(b"\r\n"):
                at = line.find(MARK)
                if line.startswith(QUEUED) and at >= 0:
                    trace.event("ACK %s" % line[at + len(MARK):].split()[0].decode())
        await write_within(writer, data, timeout_s)

    durable.fsync_file = counted_fsync
    durable.sync_dir = counted_sync_dir
    streams.write_within = traced_write_within


def _wrap_spool(trace, spool, journal, fmt):
    cls = spool.Spool
    append, commit, scan = journal.Journal.append, cls.commit, cls.scan_incoming
    kinds = {fmt.T_CHUNK: "C", fmt.T_ENVELOPE: "E"}

    def traced_append(self, ftype, tag, parts):
        seg, pos = append(self, ftype, tag, parts)
        if ftype in kinds:
            trace.event("APPEND %s %d %d" % (kinds[ftype], tag, id(seg.f)))
        return seg, pos

    async def traced_commit(self, writer, sender, recipients, info=None):
        trace.event("COMMIT-START %s" % writer.queue_id)
        queue_id = await commit(self, writer, sender, recipients, info)
        trace.event("COMMIT-END %s" % queue_id)
        return queue_id

    def traced_scan(self):
        before = set(m.id for m in self.messages())
        adopted = scan(self)
        for msg in self.messages():
            if msg.id not in before:
                trace.event("ADOPT %s" % msg.id)
        return adopted

    journal.Journal.append = traced_append
    cls.commit = traced_commit
    cls.scan_incoming = traced_scan


def install():
    """Put the shims in place if $META1LITE_SHIM_TRACE names a trace file."""
    import os
    path = os.getenv(TRACE_ENV)
    if not path:
        return None
    from meta1lite import durable, spool, streams
    from meta1lite.spool import format as spoolfmt
    from meta1lite.spool import journal
    trace = Trace(path)
    _wrap_io(trace, durable, streams)
    _wrap_spool(trace, spool, journal, spoolfmt)
    trace.event("START")
    return trace


def main():
    try:
        import meta1lite  # noqa: F401
    except ImportError:
        _add_source_tree()
    install()
    from meta1lite import __main__ as entry
    return entry.main()


if __name__ == "__main__":
    sys.exit(main())

# A queue written ahead of a test or benchmark: count small messages committed with
# the Spool API on CPython, never tried (all due when a daemon starts) or tried once
# and deferred for an hour (a backlog behind a smarthost that is down).
# CPython-only (the driver side); never used by the shared code.
BODY = b"Subject: load\r\n\r\n" + (b"x" * 78 + b"\r\n") * 25      # ~2 KB


def fill_spool(spool, count, deferred=False):
    """A spool at path `spool` with count queued messages to ops<N>@dest.test."""
    from meta1lite import compat, conf
    from meta1lite.spool import open_configured
    cfg = conf.load(None)
    compat.configure_logging("localhost", "error")
    cfg["spool"] = spool
    cfg["qmgr"]["max_messages"] = count + 100
    queue = open_configured(cfg)

    async def commit_all():
        for k in range(count):
            writer = queue.new_message()
            writer.write(BODY)
            queue_id = await queue.commit(writer, "a@relay.test", ["ops%d@dest.test" % k])
            if deferred:
                await queue.record_attempt(queue_id, [(0, "deferred", "451 4.4.1 smarthost down",
                                                       int(compat.wall_time()) + 3600)])
    compat.asyncio.run(commit_all())
    queue.close()

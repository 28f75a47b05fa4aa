# meta1lite.qmgr - MeTA1's queue manager: manager.py (QueueManager: the schedule,
# concurrency, launching deliveries), attempts.py (what an attempt's results do:
# logs, retries, bounces, alias fan-out, the spool record), bounce.py (DSNs),
# bucketmap.py (its tables), control.py (the queue tools' control channel) and
# requests.py (its request handlers, loaded at the first request).
# Nothing is imported here, so a helper loads alone.

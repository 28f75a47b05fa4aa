# meta1lite.qmgr - MeTA1's queue manager: manager.py (QueueManager: the schedule,
# concurrency, launching deliveries), attempts.py (what an attempt's results do:
# logs, retries, bounces, alias fan-out, the spool record), bounce.py (DSNs),
# bucketmap.py (its tables) and control.py (the queue tools' control channel).
# Nothing is imported here, so a helper loads alone.

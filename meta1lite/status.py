# meta1lite.status - the delivery status of one recipient: one vocabulary for the
# client core (its verdict on a reply), smtpc, qmgr and the spool. Must never
# change the order of STATUSES: the spool stores a status as its index there.
QUEUED = "queued"       # not tried yet
DEFERRED = "deferred"   # tried; to be tried again
SENT = "sent"           # the next hop took it (final)
BOUNCED = "bounced"     # refused for good, a DSN went out (final)

STATUSES = (QUEUED, DEFERRED, SENT, BOUNCED)
PENDING = (QUEUED, DEFERRED)
FINAL = (SENT, BOUNCED)

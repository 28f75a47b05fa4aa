# meta1lite.status - the delivery status of one recipient: one vocabulary for the
# client core (its verdict on a reply), smtpc, qmgr and the spool. Must never
# change the order of STATUSES: the spool stores a status as its index there.
from meta1lite.const import const

QUEUED = const("queued")  # not tried yet
DEFERRED = const("deferred")  # tried; to be tried again
SENT = const("sent")    # the next hop took it (final)
BOUNCED = const("bounced")  # refused for good, a DSN went out (final)

STATUSES = (QUEUED, DEFERRED, SENT, BOUNCED)
PENDING = (QUEUED, DEFERRED)
FINAL = (SENT, BOUNCED)

# pflogsumm (the Debian package, the tool Postfix admins run on their logs) on the
# real daemon's log, both runtimes: its received / delivered / deferred / bounced /
# rejected counts match what the test did. The daemon relays to an aiosmtpd next
# hop that accepts some recipients, defers one (450) and refuses one (550); a client
# outside relay_from (127.0.0.2) gets "relay denied" at RCPT; `meta1lite sendmail`
# injects some (pflogsumm counts them from the pickup line). .ci/run installs
# pflogsumm; elsewhere the test skips if it is missing.
import os
import re
import shutil
import smtplib
import subprocess
import sys
import time

import pytest
from helpers.daemon import RUNTIMES
from helpers.nexthop import NextHop
from test_delivery import message, send, start_relay, via, wait_for

PFLOGSUMM = shutil.which("pflogsumm") or ("/usr/sbin/pflogsumm" if os.path.exists("/usr/sbin/pflogsumm")
                                           else None)
SENDER = "dev@home.test"
DEFER_RCPT = "later@dest.test"
BOUNCE_RCPT = "gone@dest.test"
REPLIES = {DEFER_RCPT: "450 4.2.0 mailbox busy", BOUNCE_RCPT: "550 5.1.1 no such user"}
OUTSIDER = "127.0.0.2"          # not in relay_from: relay denied at RCPT
N_OK, N_DEFER, N_BOUNCE, N_REJECT, N_SENDMAIL = 5, 2, 3, 4, 2
QMGR = "retry_min = 1h;"        # one deferral per deferred message during the test
TOTALS = re.compile(r"^\s*(\d+)\s+(received|delivered|deferred|bounced|rejected)\b", re.M)


def need_pflogsumm():
    if PFLOGSUMM is None:
        if os.environ.get("CI"):
            pytest.fail("pflogsumm missing in CI (.ci/run installs it)")
        pytest.skip("pflogsumm not installed (Debian/Ubuntu: apt-get install pflogsumm)")


def pflogsumm_totals(path):
    """pflogsumm's Grand Totals: {"received": n, ...} (its first figure of each)."""
    out = subprocess.run([PFLOGSUMM, "--syslog-name=meta1lite", path], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    totals = {}
    for count, what in TOTALS.findall(out.split("Per-Day", 1)[0]):
        totals.setdefault(what, int(count))
    return totals, out


def refused_at_rcpt(port, rcpt):
    with smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(OUTSIDER, 0)) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail(SENDER, [rcpt], message(0))


def sendmail(daemon, n):
    proc = subprocess.run([sys.executable, "-m", "meta1lite", "-c", daemon.conf_path, "sendmail",
                           "-v", "-f", SENDER, "local%d@dest.test" % n], input=message(100 + n),
                          capture_output=True, timeout=60, cwd=daemon.workdir)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.decode().split("queued as ")[1].split()[0]


def drive(daemon, hop):
    """What the test does; returns the queue IDs sendmail printed."""
    for i in range(N_OK):
        send(daemon.port, SENDER, ["user%d@dest.test" % i], message(i))
    for i in range(N_DEFER):
        send(daemon.port, SENDER, [DEFER_RCPT], message(10 + i))
    for i in range(N_BOUNCE):
        send(daemon.port, SENDER, [BOUNCE_RCPT], message(20 + i))
    for i in range(N_REJECT):
        refused_at_rcpt(daemon.port, "user%d@dest.test" % i)
    injected = [sendmail(daemon, i) for i in range(N_SENDMAIL)]
    # every accepted one delivered, plus one DSN per bounced message (to SENDER)
    wait_for(lambda: len(hop.messages) >= N_OK + N_SENDMAIL + N_BOUNCE, "deliveries", daemon)
    wait_for(lambda: daemon.log().count("status=deferred") >= N_DEFER, "deferrals", daemon)
    time.sleep(0.5)
    return injected


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pflogsumm_counts_what_happened(runtime, tmp_path):
    need_pflogsumm()
    with NextHop(rcpt_replies=REPLIES) as hop:
        daemon = start_relay(runtime, tmp_path, via(hop.port), qmgr=QMGR)
        try:
            injected = drive(daemon, hop)
        finally:
            daemon.stop()
    log = daemon.log()
    totals, report = pflogsumm_totals(daemon.log_path)
    assert totals == {"received": N_OK + N_DEFER + N_BOUNCE + N_SENDMAIL,
                      "delivered": N_OK + N_SENDMAIL + N_BOUNCE,       # N_BOUNCE DSNs
                      "deferred": N_DEFER, "bounced": N_BOUNCE, "rejected": N_REJECT}, report
    # the [PID] is the process's own id on both runtimes
    assert set(re.findall(r" meta1lite/\w+\[(\d+)\]: ", log)) == {str(daemon.proc.pid)}
    assert "warning: warning:" not in log and ": warning: " not in log.replace("]: warning: ", "")
    for queue_id in injected:       # grep QUEUEID finds sender and size
        assert re.search(r"meta1lite/pickup\[\d+\]: %s: uid=\d+ from=<%s>" % (queue_id, SENDER), log)
        assert re.search(r"meta1lite/qmgr\[\d+\]: %s: from=<%s>, size=\d+, nrcpt=1" % (queue_id, SENDER), log)

# The router (issue 10): boards/openwrt/install.py installs the OpenWrt layout into
# a temporary root (DESTDIR); the relay starts from it under the MicroPython unix
# port with the command line of the procd init script, and is driven as a router's
# user would: a cron-style `sendmail -t` with the daemon up and down, mailq, queue
# flush, reload, a stop (SIGTERM, as procd) and a start with mail in the queue.
# CPython-only driver; everything on the "router" runs under micropython.
import os
import re
import signal
import socket
import subprocess
import sys
import time

from helpers.daemon import START_TIMEOUT_S, free_port
from helpers.nexthop import NextHop
from helpers.upy import ROOT, find_micropython, run_micropython
from test_delivery import wait_for

INSTALL = os.path.join(ROOT, "boards", "openwrt", "install.py")
CRON_JOB = """#!/bin/sh
# a router's nightly job: its report goes out by mail
printf 'To: ops@dest.test\\nSubject: backup %s\\n\\nbackup done\\n' "$1" | sendmail -t
"""


class Router:
    """A DESTDIR with the layout installed, and the relay it runs."""

    def __init__(self, destdir, micropython):
        self.root = str(destdir)
        self.micropython = micropython
        self.proc = None
        self.log_path = os.path.join(self.root, "logread.txt")   # what procd hands to logd

    def path(self, rel):
        return os.path.join(self.root, rel.lstrip("/"))

    def env(self):
        """What the wrappers see on the router (paths moved into DESTDIR)."""
        env = dict(os.environ)
        env.update(MICROPYTHON=self.micropython, META1LITE_LIB=self.path("/usr/lib/micropython"),
                   META1LITE_CONF=self.path("/etc/meta1lite.conf"),
                   META1LITE_BIN=self.path("/usr/bin/meta1lite"),
                   PATH=self.path("/usr/sbin") + ":" + self.path("/usr/bin") + ":/usr/bin:/bin")
        env.pop("MICROPYPATH", None)
        return env

    def run(self, *args, data=None):
        """A command on the router's PATH (sendmail, mailq, meta1lite, a script)."""
        return subprocess.run(list(args), input=data, capture_output=True, timeout=120,
                              env=self.env(), cwd="/")

    def procd_command(self):
        """The init script's `procd_set_param command` and `env`, as procd runs them
        (the script's variables and `option heapsize` of /etc/config/meta1lite)."""
        init = open(self.path("/etc/init.d/meta1lite")).read()
        values = dict(re.findall(r"^([A-Z]+)=(\S+)$", init, re.M))
        values["heap"] = re.search(r"option heapsize '([^']+)'",
                                   open(self.path("/etc/config/meta1lite")).read()).group(1)

        def expand(word):
            return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], word)

        command = [expand(w) for w in re.search(r"procd_set_param command (.*)", init).group(1).split()]
        name, _, value = expand(re.search(r"procd_set_param env (.*)", init).group(1)).partition("=")
        assert command[0] == "/usr/bin/micropython" and name == "MICROPYPATH"
        command[0] = self.micropython
        command = [self.path(w) if w.startswith("/etc/") else w for w in command]
        lib = ":".join(self.path(p) if p.startswith("/") else p for p in value.split(":"))
        return command, lib

    def start(self, port):
        command, lib = self.procd_command()
        env = {k: v for k, v in os.environ.items() if k != "MICROPYPATH"}
        env["MICROPYPATH"] = lib
        self.logfile = open(self.log_path, "ab")
        self.proc = subprocess.Popen(command, env=env, cwd="/", stdout=self.logfile,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the relay did not start:\n" + self.log())

    def stop(self):
        """procd's stop: SIGTERM (the unix port dies at once; the journal survives it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
        self.logfile.close()

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


def configure(router, port, control, hop):
    """The installed /etc/meta1lite.conf, with test ports and the spool in DESTDIR."""
    path = router.path("/etc/meta1lite.conf")
    text = open(path).read()
    for old, new in (('"/var/spool/meta1lite"', '"%s"' % router.path("/var/spool/meta1lite")),
                     ("127.0.0.1:25 }", "127.0.0.1:%d }" % port),
                     ("127.0.0.1:2526", "127.0.0.1:%d" % control),
                     ("via = mx;", 'via = "[127.0.0.1]:%d";' % hop),
                     ("retry_min = 5m;", "retry_min = 1h;")):
        assert old in text, old
        text = text.replace(old, new)
    with open(path, "w") as f:
        f.write(text)


def queued(router):
    out = router.run("mailq")
    assert out.returncode == 0, out.stderr
    return re.findall(r"^([0-9A-Z]{12})[*! ]", out.stdout.decode(), re.M)


def test_installed_router_layout(tmp_path):
    micropython = find_micropython()
    if micropython is None:
        run_micropython(["-c", "pass"])         # fails in CI, skips elsewhere
    destdir = tmp_path / "root"
    subprocess.run([sys.executable, INSTALL, "--destdir", str(destdir)], check=True,
                   capture_output=True, timeout=300)
    router = Router(destdir, micropython)
    for rel in ("/usr/sbin/sendmail", "/usr/bin/mailq", "/usr/bin/meta1lite", "/etc/init.d/meta1lite"):
        assert os.access(router.path(rel), os.X_OK), rel
    assert os.path.isfile(router.path("/usr/lib/micropython/meta1lite/cli/sendmail.mpy"))
    assert router.run("meta1lite", "check").returncode == 0
    port, control, hop_port = free_port(), free_port(), free_port()
    configure(router, port, control, hop_port)
    job = tmp_path / "nightly.sh"
    job.write_text(CRON_JOB)
    job.chmod(0o755)

    router.start(port)
    try:
        up = router.run(str(job), "up")
        assert up.returncode == 0, up.stderr
        wait_for(lambda: "status=deferred" in router.log(), "the first attempt (next hop down)")
        [first] = queued(router)
        assert re.search(r"meta1lite/pickup\[\d+\]: %s: uid=\d+ from=<" % first, router.log())
        reload = router.run("meta1lite", "reload")
        assert reload.returncode == 0, reload.stderr
        wait_for(lambda: "configuration reloaded" in router.log(), "the reload")
    finally:
        router.stop()

    down = router.run(str(job), "down")                     # the daemon is down
    assert down.returncode == 0, down.stderr
    assert len(queued(router)) == 2

    with NextHop(port=hop_port) as hop:
        router.start(port)                                  # procd's start, mail in the queue
        try:
            flush = router.run("meta1lite", "queue", "flush")
            assert flush.returncode == 0, flush.stderr
            wait_for(lambda: len(hop.messages) == 2, "both deliveries")
            wait_for(lambda: queued(router) == [], "an empty queue")
            assert router.run("mailq").stdout == b"Mail queue is empty\n"
        finally:
            router.stop()
    subjects = sorted(m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in hop.messages)
    assert subjects == [b"backup down", b"backup up"]
    assert [m.rcpt_tos for m in hop.messages] == [["ops@dest.test"]] * 2

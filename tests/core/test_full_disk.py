# A full queue file system (issue 11, item 3), with a fault-injection shim of the
# journal's write primitive (a byte budget: "another process filled the disk"): the
# record reserve lets delivery records through, each message goes out a bounded
# number of times even when nothing can be recorded, and the queue drains once space
# returns. Shared subset (runs under CPython and the MicroPython unix port).
from test_qmgr import HOUR, Rig, _cfg, _queue_n

from meta1lite import compat, durable
from meta1lite.spool import journal as journal_mod
from meta1lite.spool import space as space_mod

UPY_HEAP = "640K"
ENOSPC = compat.ENOSPC
MESSAGES = 10
MAX_SENDS = 1               # per message, even while nothing can be recorded


class FullDisk:
    """While on, writes through journal.write_all and space.write_all (the record
    reserve's refill) take bytes from `budget` (plus what a removed record reserve
    gives back) and fail with ENOSPC past it."""

    def __init__(self):
        self.on = False
        self.budget = 0
        self.refused = 0
        self.real_write = journal_mod.write_all
        self.real_spend = space_mod.RecordReserve.spend
        self.real_free = durable.free_space

    def install(self):
        disk = self

        def write_all(f, data):
            if disk.on:
                if len(data) > disk.budget:
                    disk.refused += 1
                    raise OSError(ENOSPC, "No space left on device")
                disk.budget -= len(data)
            return disk.real_write(f, data)

        def spend(reserve):
            given = disk.real_spend(reserve)
            if given:
                disk.budget += reserve.size
            return given

        def free_space(path):
            return disk.budget if disk.on else disk.real_free(path)
        journal_mod.write_all = write_all
        space_mod.write_all = write_all
        space_mod.RecordReserve.spend = spend
        durable.free_space = free_space

    def remove(self):
        journal_mod.write_all = self.real_write
        space_mod.write_all = self.real_write
        space_mod.RecordReserve.spend = self.real_spend
        durable.free_space = self.real_free


def _sends(rig):
    counts = {}
    for queue_id, _, _, _ in rig.smtpc.delivered:
        counts[queue_id] = counts.get(queue_id, 0) + 1
    return counts


async def _full_run(rig, disk, ids, hours):
    disk.on = True
    rig.start()
    for _ in range(hours * 6):          # 10-minute steps of simulated time
        await rig.advance(600)
    return _sends(rig)


def test_reserve_lets_records_through_when_the_disk_is_full():
    disk = FullDisk()
    disk.install()
    rig = Rig(_cfg(retry_min=60, retry_max=HOUR))

    async def main():
        try:
            ids = await _queue_n(rig.sp, MESSAGES)
            sends = await _full_run(rig, disk, ids, 2)
            assert sorted(sends) == sorted(ids) and set(sends.values()) == {1}, sends
            assert rig.sp.count() == 0
            assert disk.refused > 0         # the reserve was needed
        finally:
            await rig.stop()
            disk.remove()
    compat.asyncio.run(main())
    compat.set_clock()


def test_nothing_recordable_means_bounded_sends_then_drained():
    disk = FullDisk()
    disk.install()
    rig = Rig(_cfg(retry_min=60, retry_max=HOUR))
    rig.sp.journal.record_reserve.spend()     # gone too: really nothing left
    disk.budget = 0

    async def main():
        try:
            ids = await _queue_n(rig.sp, MESSAGES)
            sends = await _full_run(rig, disk, ids, 3)
            assert sorted(sends) == sorted(ids), sends
            assert max(sends.values()) <= MAX_SENDS, sends
            assert disk.refused > 0 and len(rig.qm.attempts.unrecorded) == MESSAGES
            disk.on = False                 # space returns
            for _ in range(12):
                await rig.advance(600)
            assert rig.sp.count() == 0, rig.sp.count()
            assert max(_sends(rig).values()) <= MAX_SENDS
        finally:
            await rig.stop()
            disk.remove()
    compat.asyncio.run(main())
    compat.set_clock()

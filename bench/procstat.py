"""CPU time and memory of process trees, read from /proc (Linux), for the benchmark's figures."""

from __future__ import annotations

import os
import threading
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, `state`, is index 0)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def tree(roots: list[int]) -> list[int]:
    """The roots and all their live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], [pid for pid in roots if _stat_fields(pid)]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, ()))
    return found


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU of the trees, including children they have already reaped.

    Counting reaped children keeps the sum steady when a process (a PostgreSQL backend,
    say) exits between two readings: its time moves to its parent's `cutime`.
    """
    ticks = 0
    for pid in tree(roots):
        if fields := _stat_fields(pid):
            ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used since boot (all cores, not idle)."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / CLOCK_TICKS  # guest time is already in user


def rss_bytes(roots: list[int]) -> int:
    total = 0
    for pid in tree(roots):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
        except (OSError, IndexError, ValueError):
            pass
    return total


def threads(roots: list[int]) -> int:
    """Threads in the trees (a worker's pool starts its threads as the load needs them)."""
    total = 0
    for pid in tree(roots):
        try:
            total += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return total


def thread_switches(roots: list[int]) -> int:
    """Context switches of every thread in the trees, voluntary (a thread blocked: on I/O, a
    lock, the GIL) and involuntary (preempted). Threads that already ended are not counted."""
    total = 0
    for pid in tree(roots):
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                status = Path(f"/proc/{pid}/task/{task}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    total += int(line.split()[1])
    return total


class PeakMemory:
    """Samples a tree's resident memory in the background and keeps the peak."""

    def __init__(self, roots: list[int], interval: float = 0.05) -> None:
        self.roots = roots
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.roots))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak = rss_bytes(self.roots)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.roots))

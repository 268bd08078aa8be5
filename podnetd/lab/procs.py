"""Processes the lab starts, identified by PID plus kernel start time, so a recycled PID is
never signalled. Nothing is ever looked up or killed by name."""
import os
import signal
import subprocess
import time


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None when the PID is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def alive(record: dict) -> bool:
    start = start_time(record["pid"])
    if start is None or start != record.get("start"):
        return False
    try:
        with open(f"/proc/{record['pid']}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def spawn(argv: list[str], log_path: str, env: dict | None = None) -> dict:
    """Start argv detached (own session, so the caller's terminal signals don't reach it) with
    output appended to log_path; return its record."""
    spawned = time.time()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True, env=env)
    # Popen's object is dropped on purpose: the lab outlives this process. Reap it if we stay.
    _children[proc.pid] = proc
    start = None
    for _ in range(100):
        start = start_time(proc.pid)
        if start is not None:
            break
        time.sleep(0.001)
    return {"pid": proc.pid, "start": start, "argv": argv, "log": log_path, "spawned": spawned}


_children: dict[int, subprocess.Popen] = {}


def exit_code(record: dict) -> int | None:
    """The exit code when we started it and it ended; None otherwise."""
    proc = _children.get(record["pid"])
    return proc.poll() if proc is not None else None


def stop(record: dict, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Signal the recorded process (only if it is still the one we started) and wait for it;
    SIGKILL after timeout."""
    if not alive(record):
        _reap(record["pid"])
        return
    os.kill(record["pid"], sig)
    if _wait_gone(record, timeout):
        return
    if alive(record):
        os.kill(record["pid"], signal.SIGKILL)
    _wait_gone(record, 5)


def _wait_gone(record: dict, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(record["pid"])
        if not alive(record):
            return True
        time.sleep(0.02)
    return False


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]


def rss_kib(record: dict) -> int | None:
    if not alive(record):
        return None
    with open(f"/proc/{record['pid']}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def stop_many(records: list[dict], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """stop() for several processes at once: signal all, then wait for all."""
    for record in records:
        if alive(record):
            try:
                os.kill(record["pid"], sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for record in records:
        _wait_gone(record, max(0.0, deadline - time.monotonic()))
    for record in records:
        if alive(record):
            stop(record, signal.SIGKILL, 5)

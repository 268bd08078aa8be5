"""Reading a container's CRI log as the shim writes it: FILE plus its rotated FILE.1 (newer) ..
FILE.N (older), read oldest first, in bounded pieces, following rotation.

The files are podnetd's own (the shim writes them under the pod's directory), their content
is the container's: it is passed through, never trusted to have a shape (a line without a tag
is shown as it is). Reads are of at most CHUNK bytes, so a large log never blocks the event
loop or becomes one gRPC message over the 4 MiB limit."""
import asyncio
import os
import re

from .errors import PodError

CHUNK = 64 * 1024
POLL = 0.1


def parse_line(line: bytes, timestamps: bool) -> bytes:
    """'<ts> stdout F text' -> 'text\\n' (or '<ts> text\\n'); a P (partial) record has no
    newline: the next record continues it."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 4:
        return line
    ts, _, tag, text = parts
    if timestamps and ts.endswith(b"+00:00"):   # conmon's UTC offset: shown as kubectl does
        ts = ts[:-6] + b"Z"
    return (ts + b" " if timestamps else b"") + text + (b"\n" if tag == b"F" else b"")


def records(data: bytes) -> list[bytes]:
    """Split on newlines only, keeping them: a container's '\r' is part of its text."""
    lines = data.split(b"\n")
    out = [line + b"\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def rotated(path: str) -> list[str]:
    """FILE's kept files, oldest first, FILE itself last (when it exists)."""
    directory, base = os.path.split(path)
    pattern = re.compile(re.escape(base) + r"\.([1-9][0-9]{0,5})")
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    numbered = sorted(((int(m.group(1)), n) for n in names if (m := pattern.fullmatch(n))),
                      reverse=True)
    files = [os.path.join(directory, n) for _, n in numbered]
    if base in names:
        files.append(path)
    return files


def _open_all(paths: list[str]) -> list[tuple[int, int]]:
    """(fd, inode) of each path that still exists, in order."""
    out = []
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        out.append((fd, os.fstat(fd).st_ino))
    return out


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def tail_offsets(fds: list[tuple[int, int]], lines: int) -> tuple[int, int]:
    """(index into fds, offset) where the last `lines` records of the files begin (the files
    taken as one stream; each rotated file ends with a whole record)."""
    if lines <= 0 or not fds:
        return (len(fds) - 1, os.fstat(fds[-1][0]).st_size) if fds else (0, 0)
    count = 0
    at_end = True
    for i in range(len(fds) - 1, -1, -1):
        fd = fds[i][0]
        pos = os.fstat(fd).st_size
        while pos > 0:
            start = max(0, pos - CHUNK)
            block = os.pread(fd, pos - start, start)
            j = len(block)
            if at_end and block.endswith(b"\n"):
                j -= 1  # the final newline ends the last record, it starts none
            at_end = False
            while (j := block.rfind(b"\n", 0, j)) >= 0:
                count += 1
                if count == lines:
                    return i, start + j + 1
            pos = start
    return 0, 0


async def read(path: str, *, follow: bool, running, tail: int | None = None):
    """Yield the raw CRI records of path's files (complete records, at most about CHUNK bytes
    per piece). With follow: until running() is false and everything is read, across
    rotations (a file we were reading renamed to FILE.1 is read to its end, then whatever
    came after it; files the shim dropped before we got to them are gone, as in kubelet)."""
    fds = _open_all(rotated(path))
    try:
        start_index, offset = (0, 0) if tail is None else tail_offsets(fds, tail)
        for fd, _ in fds[:start_index]:
            os.close(fd)
        fds = fds[start_index:]
        if fds and offset:
            os.lseek(fds[0][0], offset, os.SEEK_SET)
        partial = b""
        while True:
            while fds:
                fd, ino = fds[0]
                data = os.read(fd, CHUNK)
                if data:
                    data, partial = _complete(partial + data)
                    if data:
                        yield data
                    continue
                if len(fds) > 1:  # an older file is done: the next one
                    os.close(fd)
                    fds.pop(0)
                    continue
                break
            if not follow:
                break
            alive = running()
            current = _inode(path)
            ours = fds[0][1] if fds else None
            if current is not None and current != ours:
                # FILE was rotated (or first created): ours, if kept, is now FILE.k; the files
                # after it are newer. If ours is gone from the list, every kept file is newer.
                chain = _open_all(rotated(path))
                inodes = [i for _, i in chain]
                cut = inodes.index(ours) + 1 if ours in inodes else 0
                for fd, _ in chain[:cut]:
                    os.close(fd)
                if chain[cut:]:
                    fds.extend(chain[cut:])
                    continue  # read the rest of ours, then the newer ones
            if not alive:
                # one last look: what was written before the container ended is all there is
                if fds and os.fstat(fds[0][0]).st_size > os.lseek(fds[0][0], 0, os.SEEK_CUR):
                    continue
                break
            await asyncio.sleep(POLL)
        if partial:
            yield partial
    finally:
        for fd, _ in fds:
            os.close(fd)


def _complete(data: bytes) -> tuple[bytes, bytes]:
    """(complete records, the rest). A 'record' over CHUNK bytes without a newline is passed
    on as it is rather than held without bound."""
    cut = data.rfind(b"\n") + 1
    if cut == 0 and len(data) > CHUNK:
        return data, b""
    return data[:cut], data[cut:]


def _attempt(rt, c, previous: bool) -> int:
    """Which attempt's log a request reads: the one running (or the last that ran), or with
    previous the one before it; -1 when there is none."""
    if previous:
        attempt = (c.restart_count - 1) if c.attempt or c.restart_count else -1
        return attempt if attempt >= 0 and rotated(rt.log_path(c, attempt)) else -1
    if c.attempt:
        return c.attempt["n"]
    return c.restart_count if rotated(rt.log_path(c, c.restart_count)) else c.restart_count - 1


def has_log(rt, c) -> bool:
    """Whether the container ever wrote a log here (a container still waiting for its first
    start has none: kubectl's "is waiting to start")."""
    return c.attempt is not None or bool(rotated(rt.log_path(c, max(_attempt(rt, c, False), 0))))


async def container_log(rt, c, *, follow: bool, tail: int | None, previous: bool = False,
                        timestamps: bool = False):
    """A container's log as the user reads it (the CRI tags stripped), in pieces of about
    CHUNK bytes; with follow, each piece as it comes, until the attempt ends. The node-local
    PodService and the cluster's PodIOService both serve it. Raises PodError (not_found) for
    previous when there is no terminated attempt."""
    attempt = _attempt(rt, c, previous)
    if previous and attempt < 0:
        raise PodError(f"previous terminated container {c.name!r} in pod {c.pod.name!r} "
                       "not found", "not_found")
    path = rt.log_path(c, max(attempt, 0))
    follow = follow and not previous

    def running() -> bool:
        return c.attempt is not None and c.attempt.get("log") == path
    out: list[bytes] = []
    size = 0
    async for recs in read(path, follow=follow, running=running, tail=tail):
        for line in records(recs):
            text = parse_line(line, timestamps)
            out.append(text)
            size += len(text)
            if size >= CHUNK:
                yield b"".join(out)
                out, size = [], 0
        if out and follow:  # a follower wants what came, not a full message
            yield b"".join(out)
            out, size = [], 0
    if out:
        yield b"".join(out)

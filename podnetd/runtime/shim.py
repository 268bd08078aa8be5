"""The per-container shim, run as `python -I -S shim.py --log FILE --exit FILE -- RUNC...`.

It lives in its own session so it outlives podnetd, runs `runc run` (foreground) so that the
container's exit status is known, writes the container's stdout/stderr to FILE in the CRI log
format ("<RFC3339Nano> stdout|stderr F|P <text>") and, when runc exits, writes the exit status to
the exit file (atomically). Built-in modules only: it starts once per container.
"""
import os
import select
import signal
import sys
import time


def _stamp() -> bytes:
    now = time.time()
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + ".%09dZ" % int((now % 1) * 1e9)).encode()


class LogFile:
    """The container's CRI log, rotated as kubelet rotates it: when the next lines would take
    the file past max_size it becomes FILE.1 (FILE.1 becomes FILE.2, ...) and a new FILE
    starts; at most max_files files are kept, the current one included (0: no rotation). A
    failing write (a full disk) loses those lines, never the shim."""

    def __init__(self, path: str, max_size: int = 0, max_files: int = 0):
        self.path, self.max_size, self.max_files = path, max_size, max_files
        self.fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                              0o640)
            self.size = os.fstat(self.fd).st_size
        except OSError:
            self.fd, self.size = -1, 0

    def _rotate(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        try:
            for n in range(self.max_files - 2, 0, -1):
                try:
                    os.rename(f"{self.path}.{n}", f"{self.path}.{n + 1}")
                except FileNotFoundError:
                    pass
            os.rename(self.path, f"{self.path}.1")
        except OSError:
            pass
        self._open()

    def _write(self, data: bytes) -> None:
        if self.fd < 0:
            self._open()
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
                self.size += n
        except OSError:
            pass

    def write(self, lines: list[bytes]) -> None:
        batch: list[bytes] = []
        pending = 0
        for line in lines:
            if self.max_size and self.max_files >= 2 and self.size + pending > 0 \
                    and self.size + pending + len(line) > self.max_size:
                self._write(b"".join(batch))
                batch, pending = [], 0
                self._rotate()
            batch.append(line)
            pending += len(line)
        self._write(b"".join(batch))


def _read_job() -> list[str]:
    """A pre-started (idle) shim: its job arrives as one line of JSON on stdin, so that the
    interpreter's start-up is not on a pod's critical path. stdin is /dev/null afterwards."""
    import json
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 65536)
        if not chunk:  # podnetd went away before giving a job: nothing to do
            sys.exit(0)
        data += chunk
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return json.loads(data)


def main(argv: list[str]) -> int:
    if argv == ["--job-on-stdin"]:
        argv = _read_job()
    sep = argv.index("--")
    opts = dict(zip(argv[:sep:2], argv[1:sep:2]))
    cmd = argv[sep + 1:]
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        for fd in (null, out_r, out_w, err_r, err_w):
            os.close(fd)
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    os.close(out_w)
    os.close(err_w)
    log = LogFile(opts["--log"], int(opts.get("--log-max-size", 0)),
                  int(opts.get("--log-max-files", 0)))
    names = {out_r: b"stdout", err_r: b"stderr"}
    partial = {out_r: b"", err_r: b""}
    pidfd = os.pidfd_open(pid)
    status = None
    open_fds = [out_r, err_r]
    while open_fds:
        ready, _, _ = select.select(open_fds + ([pidfd] if status is None else []), [], [],
                                    None if status is None else 0.2)
        if not ready:  # runc is gone and nothing more came: a grandchild may hold the pipe
            break
        for fd in ready:
            if fd == pidfd:
                status = os.waitpid(pid, 0)[1]
                continue
            data = os.read(fd, 65536)
            if not data:
                open_fds.remove(fd)
                data, partial[fd] = partial[fd], b""
                if data:
                    log.write([b"%s %s P %s\n" % (_stamp(), names[fd], data)])
                continue
            lines = (partial[fd] + data).split(b"\n")
            partial[fd] = lines.pop()
            if lines:
                stamp = _stamp()
                log.write([b"%s %s F %s\n" % (stamp, names[fd], line) for line in lines])
            if len(partial[fd]) > 16384:
                log.write([b"%s %s P %s\n" % (_stamp(), names[fd], partial[fd])])
                partial[fd] = b""
    if status is None:
        status = os.waitpid(pid, 0)[1]
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        code = 128 - code
    tmp = opts["--exit"] + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{code} {time.time():.6f}\n")
    os.rename(tmp, opts["--exit"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

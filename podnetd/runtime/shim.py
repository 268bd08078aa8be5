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
    log = os.open(opts["--log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
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
                    os.write(log, b"%s %s P %s\n" % (_stamp(), names[fd], data))
                continue
            lines = (partial[fd] + data).split(b"\n")
            partial[fd] = lines.pop()
            if lines:
                stamp = _stamp()
                os.write(log, b"".join(b"%s %s F %s\n" % (stamp, names[fd], line)
                                       for line in lines))
            if len(partial[fd]) > 16384:
                os.write(log, b"%s %s P %s\n" % (_stamp(), names[fd], partial[fd]))
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

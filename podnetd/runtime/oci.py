"""Invocations of the OCI runtime (runc by default, crun selectable) and of the per-container
shim. Flat async functions; everything here forks runc/crun.

Containers are never children that die with podnetd: the pause container is started with
`runc run -d` in a new session, app containers under shim.py (a new session too) that owns the
foreground `runc run` so that it learns the exit status, and writes the logs to files.
"""
import asyncio
import contextlib
import json
import os
import signal as _signal
import subprocess
import sys

from ..kernel.errors import KernelError

SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim.py")


class OciError(KernelError):
    pass


def runtime_argv(name: str) -> list[str]:
    """The command that runs the OCI runtime. crun 1.8 refuses the hybrid cgroup v1 layout
    (it sees the cgroup2 'unified' mount), so it runs in a private mount namespace without it."""
    if name == "crun" and os.path.ismount("/sys/fs/cgroup/unified"):
        return ["unshare", "-m", "--propagation", "private", "sh", "-c",
                'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"', "crun"]
    return [name]


async def _bounded(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Read stream to its end, keeping at most limit bytes (the rest is read and dropped, so
    the writer never blocks); one more byte than limit says it was cut."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) <= limit:
            kept += chunk[:limit + 1 - len(kept)]
    return bytes(kept)


async def _communicate(proc, stdin: bytes | None, limit: int | None) -> tuple[bytes, bytes]:
    if limit is None:
        return await proc.communicate(stdin)

    async def feed():
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(stdin or b"")
                await proc.stdin.drain()
            proc.stdin.close()
    _, out, err = await asyncio.gather(feed(), _bounded(proc.stdout, limit),
                                       _bounded(proc.stderr, limit))
    await proc.wait()
    return out, err


async def _call(argv: list[str], what: str, *, stdin: bytes | None = None,
                timeout: float | None = None, check: bool = True,
                max_output: int | None = None) -> tuple[int, bytes, bytes]:
    """Run argv; with max_output, each of stdout and stderr is cut to that many bytes (what a
    container writes through `runc exec` must not fill podnetd's memory)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(_communicate(proc, stdin, max_output), timeout)
        if max_output is not None:
            notes = b"".join(f"\n[podnetd: {name} cut at {max_output} bytes]\n".encode()
                             for name, data in (("stdout", out), ("stderr", err))
                             if len(data) > max_output)
            out, err = out[:max_output], err[:max_output] + notes
    except (asyncio.TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    if check and proc.returncode != 0:
        msg = err.decode(errors="replace").strip().splitlines()
        raise OciError(f"{what}: {msg[-1] if msg else f'exit {proc.returncode}'}")
    return proc.returncode, out, err


async def run_detached(runtime: str, cid: str, bundle: str, log_path: str) -> None:
    """`runc run -d`: it hands its stdio to the container, so stdio is a file, never a pipe."""
    with open(log_path, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *runtime_argv(runtime), "run", "-d", "--bundle", bundle, cid,
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        rc = await proc.wait()
    if rc != 0:
        raise OciError(f"{runtime} run {cid}: exit {rc}: {_tail(log_path)}")


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 400))
            lines = f.read().decode(errors="replace").strip().splitlines()
            return lines[-1] if lines else ""
    except OSError:
        return ""


def shim_argv(runtime: str, cid: str, bundle: str, log_path: str, exit_path: str,
              pid_path: str) -> list[str]:
    """The shim's job: runc run --keep (foreground) with logs and the exit file.
    (crun has no --keep: it removes the cgroup on exit, so an OOM kill under crun shows as exit
    137 "Error", not "OOMKilled".)"""
    return ["--log", log_path, "--exit", exit_path, "--",
            *runtime_argv(runtime), "run", *(["--keep"] if runtime == "runc" else []),
            "--bundle", bundle, "--pid-file", pid_path, cid]


class IdleShim:
    """A shim started ahead of need (new session, stdio to a file), waiting for its job on a
    pipe; handing it a job costs a write instead of an interpreter start-up."""

    def __init__(self, shim_log: str):
        r, self._w = os.pipe()
        with open(shim_log, "ab") as slog:
            proc = subprocess.Popen([sys.executable, "-I", "-S", SHIM, "--job-on-stdin"],
                                    stdin=r, stdout=slog, stderr=slog, start_new_session=True,
                                    close_fds=True)
        os.close(r)
        os.set_inheritable(self._w, False)
        proc.returncode = 0  # reaped by host.reap, not by subprocess
        self.pid = proc.pid

    def run(self, argv: list[str]) -> int:
        try:
            os.write(self._w, (json.dumps(argv) + "\n").encode())
        finally:
            os.close(self._w)
        return self.pid

    def discard(self) -> None:
        os.close(self._w)  # EOF: the idle shim exits


def spawn_shim(argv: list[str], shim_log: str) -> int:
    """Start a shim for this job now (no idle one at hand); returns its pid."""
    with open(shim_log, "ab") as slog:
        proc = subprocess.Popen([sys.executable, "-I", "-S", SHIM, *argv],
                                stdin=subprocess.DEVNULL, stdout=slog, stderr=slog,
                                start_new_session=True, close_fds=True)
    proc.returncode = 0
    return proc.pid


async def kill(runtime: str, cid: str, sig: int = _signal.SIGTERM, *, all_: bool = False) -> bool:
    argv = [*runtime_argv(runtime), "kill", *(["--all"] if all_ else []), cid, str(int(sig))]
    rc, _, _ = await _call(argv, f"{runtime} kill {cid}", check=False)
    return rc == 0


async def delete(runtime: str, cid: str) -> None:
    rc, _, err = await _call([*runtime_argv(runtime), "delete", "-f", cid],
                             f"{runtime} delete {cid}", check=False)
    if rc != 0 and b"does not exist" not in err and b"not exist" not in err:
        raise OciError(f"{runtime} delete {cid}: {err.decode(errors='replace').strip()}")


async def state(runtime: str, cid: str) -> dict | None:
    rc, out, _ = await _call([*runtime_argv(runtime), "state", cid], f"{runtime} state {cid}",
                             check=False)
    if rc != 0:
        return None
    try:
        return json.loads(out)
    except ValueError:
        return None


async def exec_(runtime: str, cid: str, argv: list[str], *, stdin: bytes = b"",
                timeout: float | None = None,
                max_output: int = 2**20) -> tuple[int, bytes, bytes]:
    """Run a command in a running container; returns (exit code, stdout, stderr), each cut to
    max_output bytes (a note at the end of stderr says so). A timeout raises
    asyncio.TimeoutError (the runc exec is killed, not the container)."""
    return await _call([*runtime_argv(runtime), "exec", cid, *argv],
                       f"{runtime} exec {cid}", stdin=stdin, timeout=timeout, check=False,
                       max_output=max_output)

"""Invocations of the OCI runtime (runc by default, crun selectable) and of conmon, the
per-container monitor. Flat async functions; everything here forks runc/crun or conmon.

Containers are never children that die with podnetd: the pause container is started with
`runc run -d` in a new session, app containers under conmon (as CRI-O and podman run them):
conmon runs `runc create`, double-forks away from podnetd and stays the container's parent
(subreaper) to learn its exit status; it writes the CRI log, the exit file and the OOM fact.
podnetd then `runc start`s the container. runc does not stay resident.
"""
import asyncio
import contextlib
import json
import os
import signal as _signal
import shutil
import subprocess

from ..aio import within
from ..kernel.errors import KernelError

CONMON = "conmon"
CRUN_WRAPPER = """#!/bin/sh
# crun 1.8 refuses the hybrid cgroup v1 layout: run it without /sys/fs/cgroup/unified
exec unshare -m --propagation private sh -c \
    'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"' crun "$@"
"""


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
        out, err = await within(_communicate(proc, stdin, max_output), timeout)
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


async def run_detached(runtime: str, cid: str, bundle: str, log_path: str) -> int:
    """`runc run -d`: it hands its stdio to the container, so stdio is a file, never a pipe.
    Returns the container's pid (from --pid-file: no `runc state` afterwards), 0 if unknown."""
    pid_file = os.path.join(bundle, "pid")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pid_file)
    with open(log_path, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *runtime_argv(runtime), "run", "-d", "--pid-file", pid_file, "--bundle", bundle, cid,
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        rc = await proc.wait()
    if rc != 0:
        raise OciError(f"{runtime} run {cid}: exit {rc}: {_tail(log_path)}")
    try:
        with open(pid_file) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 400))
            lines = f.read().decode(errors="replace").strip().splitlines()
            return lines[-1] if lines else ""
    except OSError:
        return ""


def runtime_binary(name: str, wrapper_dir: str) -> str:
    """The path conmon runs as the OCI runtime (-r): the binary, or for crun on a hybrid
    cgroup layout a wrapper script (see runtime_argv) written into wrapper_dir."""
    if name == "crun" and os.path.ismount("/sys/fs/cgroup/unified"):
        path = os.path.join(wrapper_dir, "crun-wrapper")
        if not os.path.exists(path):
            with open(path + ".tmp", "w") as f:
                f.write(CRUN_WRAPPER)
            os.chmod(path + ".tmp", 0o755)
            os.rename(path + ".tmp", path)
        return path
    found = shutil.which(name)
    if found is None:
        raise OciError(f"{name} is not installed")
    return found


def conmon_argv(runtime_path: str, cid: str, bundle: str, log_path: str, exit_dir: str,
                persist_dir: str, pid_file: str, conmon_pid_file: str) -> list[str]:
    """conmon for one container attempt: `runc create` of the bundle, the CRI log (k8s-file),
    the exit file in exit_dir (named after cid), the OOM fact in persist_dir; attach sockets
    and the ctl FIFO (log reopen) live in the bundle."""
    return [CONMON, "--api-version", "1", "-c", cid, "-u", cid, "-n", cid, "-r", runtime_path,
            "-b", bundle, "-p", pid_file, "-P", conmon_pid_file, "-l", f"k8s-file:{log_path}",
            "--exit-dir", exit_dir, "--persist-dir", persist_dir, "--socket-dir-path", bundle,
            "--log-level", "warning"]


def _conmon_create(argv: list[str], log_path: str, timeout: float) -> int:
    """Blocking: start conmon and wait for its report on the sync pipe (the container's pid,
    or the runtime's error). conmon's first process exits at once; the monitor lives on."""
    import select
    r, w = os.pipe()
    try:
        env = dict(os.environ, _OCI_SYNCPIPE=str(w), TZ="UTC")  # log times in UTC
        with open(log_path, "ab") as out:
            # cwd: conmon (cgroup v1) writes an "oom" file in its working directory
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    pass_fds=(w,), env=env, start_new_session=True,
                                    cwd=argv[argv.index("-b") + 1])
        os.close(w)
        w = -1
        proc.wait()
        data = b""
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([r], [], [], timeout)
            if not ready:
                raise OciError(f"conmon {argv[argv.index('-c') + 1]}: no answer in {timeout:g}s")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    try:
        msg = json.loads(data.splitlines()[0]) if data else {}
    except ValueError:
        msg = {}
    pid = msg.get("data") if isinstance(msg, dict) else None
    if not isinstance(pid, int) or pid <= 0:
        why = (msg.get("message") if isinstance(msg, dict) else None) or _tail(log_path) \
            or f"conmon exit {proc.returncode}"
        raise OciError(f"create {argv[argv.index('-c') + 1]}: {str(why).strip()[-400:]}")
    return pid


async def create_under_conmon(argv: list[str], log_path: str, timeout: float = 30) -> int:
    """The container created under its conmon (not started); returns its init's pid."""
    return await asyncio.to_thread(_conmon_create, argv, log_path, timeout)


async def start(runtime: str, cid: str) -> None:
    await _call([*runtime_argv(runtime), "start", cid], f"{runtime} start {cid}")


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

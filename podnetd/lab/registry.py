"""The lab's image registry: Debian's docker-registry (the CNCF distribution registry) in a
namespace of its own on the underlay, plain HTTP on port 5000, storage in the lab dir, with the
busybox test image pushed to it as busybox:1 (skopeo), so the nodes' kubelets pull images as a
cluster's do. Every node's podnetd gets --insecure-registry for it (plain HTTP is the lab's
choice: the underlay exists only inside the lab's namespaces)."""
import os
import secrets
import shutil
import subprocess
import time

import yaml

from . import netops, procs

NAME = "registry"           # its process record and its underlay port's name
BINARY = "docker-registry"
TEST_IMAGE = "busybox:1"


class RegistryError(Exception):
    pass


def installed() -> bool:
    return bool(shutil.which(BINARY) and shutil.which("skopeo"))


def write_config(d: str, address: str) -> str:
    """The registry's config.yml in d (storage under d/data); its path."""
    cfg = {"version": 0.1, "log": {"level": "info", "accesslog": {"disabled": True}},
           "storage": {"filesystem": {"rootdirectory": os.path.join(d, "data")},
                       "delete": {"enabled": True}},
           # the secret signs upload state between requests; one instance, so any random one
           "http": {"addr": address, "secret": secrets.token_hex(16)}}
    path = os.path.join(d, "config.yml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def argv(ns: str, config: str) -> list[str]:
    # nsenter execs the registry: the recorded PID is the registry's own
    return [*netops.nsenter(ns), BINARY, "serve", config]


def wait_listening(record: dict, address: str, timeout: float = 20, offset: int = 0) -> None:
    """Until the registry logs (after byte `offset` of its log) that it listens on address;
    RegistryError when it exits or takes longer than timeout."""
    deadline = time.monotonic() + timeout
    while True:
        text = _read(record["log"], offset)
        if f"listening on {address}" in text:
            return
        if not procs.alive(record):
            raise RegistryError(f"{BINARY} exited:\n{_tail(text)}")
        if time.monotonic() > deadline:
            raise RegistryError(f"{BINARY} not listening on {address} after {timeout}s:\n"
                                f"{_tail(text)}")
        time.sleep(0.05)


def push_test_image(ns: str, d: str, address: str, name: str = TEST_IMAGE) -> str:
    """Build the busybox test image (podnetd.runtime.busybox_image, docker-archive format) and
    push it to the registry as NAME:TAG with skopeo, from the registry's namespace; the image's
    full name."""
    from ..runtime import busybox_image
    archive = os.path.join(d, "busybox.tar")
    busybox_image.write(archive, "docker")
    image = f"{address}/{name}"
    try:
        proc = subprocess.run([*netops.nsenter(ns), "skopeo", "copy", "--quiet",
                               "--dest-tls-verify=false", f"docker-archive:{archive}",
                               f"docker://{image}"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RegistryError(f"push {image}: {e}") from None
    finally:
        os.unlink(archive)
    if proc.returncode != 0:
        raise RegistryError(f"push {image}: skopeo: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return image


def _read(path: str, offset: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "(no log)"

"""A real OCI registry for the runtime's pull tests: Debian's docker-registry (the CNCF
distribution registry) inside a node netns, storage in a temp dir, optionally with htpasswd
basic auth (bcrypt from libc's crypt(3), which knows $2b$); images pushed with skopeo from the
archives the suite builds."""
import os
import shutil
import subprocess
import tempfile
import time
import warnings

import yaml

from testlib import in_ns, unique

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # noqa: E402 (bcrypt hashes for htpasswd; no pip dependency)


class Registry:
    """docker-registry serving http://127.0.0.1:PORT inside netns `netns`."""

    def __init__(self, netns: str, port: int, users: dict[str, str] | None = None):
        self.netns = netns
        self.port = port
        self.users = users or {}
        self.dir = tempfile.mkdtemp(prefix=f"{unique('reg')}-")
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> "Registry":
        cfg = {"version": 0.1, "log": {"level": "info"},
               "storage": {"filesystem": {"rootdirectory": os.path.join(self.dir, "data")},
                           "delete": {"enabled": True}},
               "http": {"addr": self.host, "secret": unique("s")}}
        if self.users:
            htpasswd = os.path.join(self.dir, "htpasswd")
            with open(htpasswd, "w") as f:
                for user, password in self.users.items():
                    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
                    f.write(f"{user}:{hashed}\n")
            cfg["auth"] = {"htpasswd": {"realm": "podnet-test", "path": htpasswd}}
        path = os.path.join(self.dir, "config.yml")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        log = open(os.path.join(self.dir, "registry.log"), "ab")
        # nsenter execs the registry itself: proc.pid is the registry's pid
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns}",
                                      "docker-registry", "serve", path],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited {self.proc.returncode}: {self.log()}")
            if f"listening on {self.host}" in self.log():
                return self
            time.sleep(0.05)
        raise TimeoutError(f"docker-registry not listening after {timeout}s: {self.log()}")

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "registry.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def push(self, source: str, name: str, creds: str = "") -> str:
        """skopeo copy SOURCE (e.g. oci-archive:/x.tar) to this registry as NAME:TAG; the
        image's full name."""
        ref = f"{self.host}/{name}"
        argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        if creds:
            argv += ["--dest-creds", creds]
        in_ns(self.netns, *argv, source, f"docker://{ref}")
        return ref

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

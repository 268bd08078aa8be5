"""Build a small busybox image archive from the host's static busybox (Debian busybox-static),
offline, so that `podnetctl image import` is exercised for real by the tests and the demo.

    python -m podnetd.runtime.busybox_image OUT.tar [--format docker|oci] [--busybox PATH]

Two layers: the base (busybox, applet symlinks, passwd/group, /tmp) and a second one that
deletes a base file with a whiteout and replaces /opt with an opaque directory, as image
builders do. (Debian's busybox `wget` segfaults; use `nc` in pods.)"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time

PASSWD = ("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
          "app:x:1000:1000:app:/home/app:/bin/sh\n")
GROUP = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\n"


def add_entry(tar: tarfile.TarFile, name: str, *, data: bytes | None = None, mode: int = 0o644,
              kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    """One entry of a layer (tests build hostile layers with it too)."""
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.mode = mode
    info.type = kind
    info.linkname = link
    if data is not None:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def layer_blob(build) -> bytes:
    """The tar blob that build(tar) fills."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return buf.getvalue()


def layers(busybox: str) -> list[bytes]:
    with open(busybox, "rb") as f:
        binary = f.read()
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()

    def base(tar):
        for d, mode in (("bin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777),
                        ("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("var", 0o755),
                        ("home", 0o755), ("home/app", 0o755), ("opt", 0o755),
                        ("opt/old", 0o755), ("usr", 0o755)):
            add_entry(tar, d, kind=tarfile.DIRTYPE, mode=mode)
        add_entry(tar, "bin/busybox", data=binary, mode=0o755)
        for applet in applets:
            if applet != "busybox":
                add_entry(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        add_entry(tar, "usr/bin", kind=tarfile.SYMTYPE, link="../bin", mode=0o777)
        add_entry(tar, "etc/passwd", data=PASSWD.encode())
        add_entry(tar, "etc/group", data=GROUP.encode())
        add_entry(tar, "etc/removed-by-layer2", data=b"whiteout test\n")
        add_entry(tar, "opt/old/file", data=b"hidden by an opaque directory\n")

    def top(tar):
        add_entry(tar, "etc", kind=tarfile.DIRTYPE, mode=0o755)
        add_entry(tar, "etc/.wh.removed-by-layer2", data=b"")
        add_entry(tar, "opt", kind=tarfile.DIRTYPE, mode=0o755)
        add_entry(tar, "opt/.wh..wh..opq", data=b"")
        add_entry(tar, "opt/new", data=b"layer2\n")
        add_entry(tar, "etc/image-release", data=b"podnet busybox\n")

    return [layer_blob(base), layer_blob(top)]


def config(diff_ids: list[str]) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0)),
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, sort_keys=True).encode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(out: str, fmt: str = "docker", busybox: str = "/bin/busybox",
          tag: str = "busybox:latest") -> str:
    blobs = layers(busybox)
    cfg = config([f"sha256:{_sha(b)}" for b in blobs])
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w") as tar:
        if fmt == "docker":
            names = []
            for blob in blobs:
                name = f"{_sha(blob)}.tar"
                add_entry(tar, name, data=blob)
                names.append(name)
            add_entry(tar, f"{_sha(cfg)}.json", data=cfg)
            add_entry(tar, "manifest.json", data=json.dumps([{
                "Config": f"{_sha(cfg)}.json", "RepoTags": [tag], "Layers": names}]).encode())
        else:
            add_entry(tar, "blobs", kind=tarfile.DIRTYPE, mode=0o755)
            add_entry(tar, "blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755)
            for blob in [*blobs, cfg]:
                add_entry(tar, f"blobs/sha256/{_sha(blob)}", data=blob)
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": f"sha256:{_sha(cfg)}", "size": len(cfg)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": f"sha256:{_sha(b)}", "size": len(b)} for b in blobs],
            }).encode()
            add_entry(tar, f"blobs/sha256/{_sha(manifest)}", data=manifest)
            add_entry(tar, "oci-layout", data=b'{"imageLayoutVersion": "1.0.0"}')
            add_entry(tar, "index.json", data=json.dumps({"schemaVersion": 2, "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{_sha(manifest)}", "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag}}]}).encode())
    os.rename(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--format", choices=["docker", "oci"], default="docker")
    p.add_argument("--busybox", default="/bin/busybox")
    args = p.parse_args(argv)
    if not os.access(args.busybox, os.X_OK):
        sys.stderr.write(f"busybox_image: {args.busybox}: not an executable "
                         "(apt-get install busybox-static)\n")
        return 1
    print(write(args.out, args.format, args.busybox))
    return 0


if __name__ == "__main__":
    sys.exit(main())

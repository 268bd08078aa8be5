"""Build image archives in tests, hostile ones included: layers from entry lists, then an OCI
layout archive or a docker archive (`podman save`'s two formats), with every digest right
unless a test overrides it."""
import gzip
import hashlib
import io
import json
import tarfile


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, *,
          mode: int = 0o644, link: str = "", uid: int = 0, gid: int = 0,
          devmajor: int = 0, devminor: int = 0) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.uid, info.gid = kind, mode, link, uid, gid
    info.devmajor, info.devminor, info.mtime = devmajor, devminor, 1_000_000
    if kind == tarfile.REGTYPE:
        data = data or b""
        info.size = len(data)
    return info, data


def d(name: str, mode: int = 0o755):
    return entry(name, tarfile.DIRTYPE, mode=mode)


def f(name: str, data: bytes = b"x\n", **kw):
    return entry(name, tarfile.REGTYPE, data, **kw)


def sym(name: str, target: str, **kw):
    return entry(name, tarfile.SYMTYPE, link=target, mode=0o777, **kw)


def hard(name: str, target: str, **kw):
    return entry(name, tarfile.LNKTYPE, link=target, **kw)


def layer(*entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


def config(layers: list[bytes], cmd=("sh",)) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux",
                       "config": {"Cmd": list(cmd)},
                       "rootfs": {"type": "layers",
                                  "diff_ids": [f"sha256:{sha(l)}" for l in layers]}}).encode()


def write_tar(path: str, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def oci(path: str, layers: list[bytes], *, blobs: list[bytes] | None = None,
        cfg: bytes | None = None, config_digest: str | None = None,
        layer_digests: list[str] | None = None, index: bytes | None = None,
        manifest: bytes | None = None, extra: list[tuple[str, bytes]] = ()) -> str:
    """An OCI layout archive. `layers` are the uncompressed tars (the config's diff_ids);
    `blobs` what is stored (default: the same); the digest overrides make it lie."""
    blobs = layers if blobs is None else blobs
    cfg = config(layers) if cfg is None else cfg
    config_digest = config_digest or f"sha256:{sha(cfg)}"
    layer_digests = layer_digests or [f"sha256:{sha(b)}" for b in blobs]
    if manifest is None:
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(cfg)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": dg, "size": len(b)} for dg, b in zip(layer_digests, blobs)],
        }).encode()
    if index is None:
        index = json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": f"sha256:{sha(manifest)}", "size": len(manifest)}]}).encode()
    members = [(f"blobs/sha256/{dg.partition(':')[2]}", b)
               for dg, b in zip(layer_digests, blobs)]
    members += [(f"blobs/sha256/{config_digest.partition(':')[2]}", cfg),
                (f"blobs/sha256/{sha(manifest)}", manifest),
                ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", index),
                *extra]
    return write_tar(path, members)


def docker(path: str, layers: list[bytes], *, blobs: list[bytes] | None = None,
           cfg: bytes | None = None, manifest: bytes | None = None,
           extra: list[tuple[str, bytes]] = ()) -> str:
    """A docker archive (manifest.json, <sha>.json config, <sha>/layer.tar layers)."""
    blobs = layers if blobs is None else blobs
    cfg = config(layers) if cfg is None else cfg
    names = [f"{sha(l)}/layer.tar" for l in layers]
    if manifest is None:
        manifest = json.dumps([{"Config": f"{sha(cfg)}.json", "RepoTags": ["x:latest"],
                                "Layers": names}]).encode()
    members = [(n, b) for n, b in zip(names, blobs)]
    members += [(f"{sha(cfg)}.json", cfg), ("manifest.json", manifest), *extra]
    return write_tar(path, members)


def archive(fmt: str, path: str, layers: list[bytes], **kw) -> str:
    return (oci if fmt == "oci" else docker)(path, layers, **kw)

"""The offline image store: `podnetctl image import NAME ARCHIVE` reads an OCI or a docker
archive (what `podman save` writes), applies its layers in order with their whiteouts into one
read-only root directory per image (the lower layer of each container's overlayfs), and keeps
the image config (Entrypoint, Cmd, Env, WorkingDir, User).

Layout: <root>/index.json {name: id}; <root>/<id>/rootfs/; <root>/<id>/image.json.
Blocking functions: called off the event loop."""
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class ImageError(Exception):
    pass


def normalize(name: str) -> str:
    """busybox -> busybox:latest; docker.io/library/busybox -> busybox:latest."""
    name = name.strip()
    for prefix in ("docker.io/library/", "docker.io/", "localhost/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    last = name.rsplit("/", 1)[-1]
    if "@" not in last and ":" not in last:
        name += ":latest"
    return name


def _safe_rel(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"layer entry {name!r} escapes the root")
    return "/".join(parts)


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root + "/")


def _remove(path: str) -> None:
    if os.path.islink(path) or not os.path.isdir(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    else:
        shutil.rmtree(path, ignore_errors=True)


def apply_layer(layer: tarfile.TarFile, root: str) -> None:
    """Apply one layer on root: whiteouts first (they hide lower layers only), then entries."""
    root = os.path.realpath(root)
    members = layer.getmembers()
    for m in members:
        rel = _safe_rel(m.name)
        base = os.path.basename(rel)
        parent = os.path.join(root, os.path.dirname(rel))
        if not base.startswith(WHITEOUT) or not _inside(root, parent):
            continue
        if base == OPAQUE:
            if os.path.isdir(parent) and not os.path.islink(parent):
                for entry in os.listdir(parent):
                    _remove(os.path.join(parent, entry))
        else:
            _remove(os.path.join(parent, base[len(WHITEOUT):]))
    for m in members:
        rel = _safe_rel(m.name)
        if not rel or os.path.basename(rel).startswith(WHITEOUT):
            continue
        target = os.path.join(root, rel)
        if not _inside(root, os.path.dirname(target)):
            raise ImageError(f"layer entry {m.name!r} goes through a link out of the root")
        if m.islnk():
            m.linkname = _safe_rel(m.linkname)
        if os.path.lexists(target) and not (m.isdir() and os.path.isdir(target)
                                            and not os.path.islink(target)):
            _remove(target)
        m.name = rel
        layer.extract(m, root, set_attrs=True, numeric_owner=True, **_NO_FILTER)


# The path checks above are ours, so tarfile's own filter is off ("fully_trusted", the historic
# behaviour). Debian 12's python3 (3.11.2) predates extraction filters and rejects the keyword.
_NO_FILTER = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}


def _open_layer(outer: tarfile.TarFile, path: str) -> tarfile.TarFile:
    f = outer.extractfile(_safe_rel(path))
    if f is None:
        raise ImageError(f"layer {path} is not a file in the archive")
    return tarfile.open(fileobj=f, mode="r:*")


def _read_json(outer: tarfile.TarFile, path: str) -> dict:
    try:
        f = outer.extractfile(_safe_rel(path))
    except KeyError:
        raise ImageError(f"{path} is missing from the archive") from None
    try:
        return json.load(f)
    except ValueError as e:
        raise ImageError(f"{path}: not JSON: {e}") from None


def _blob(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    return f"blobs/{algo}/{hexd}"


def read_archive(outer: tarfile.TarFile) -> tuple[dict, list[str], str]:
    """(image config, layer paths inside the archive bottom first, image id)."""
    names = set(outer.getnames())
    if "manifest.json" in names:  # docker archive
        manifest = _read_json(outer, "manifest.json")
        if not isinstance(manifest, list) or not manifest:
            raise ImageError("manifest.json: expected a non-empty list")
        entry = manifest[0]
        config_path = entry.get("Config", "")
        config = _read_json(outer, config_path)
        image_id = hashlib.sha256(outer.extractfile(_safe_rel(config_path)).read()).hexdigest()
        return config, list(entry.get("Layers", [])), image_id
    if "index.json" in names:  # OCI layout
        doc = _read_json(outer, "index.json")
        for _ in range(4):  # an index may point at another index
            manifests = doc.get("manifests") or []
            if not manifests:
                break
            desc = manifests[0]
            doc = _read_json(outer, _blob(desc["digest"]))
            if "layers" in doc:
                config = _read_json(outer, _blob(doc["config"]["digest"]))
                image_id = doc["config"]["digest"].partition(":")[2]
                return config, [_blob(l["digest"]) for l in doc["layers"]], image_id
        raise ImageError("index.json: no image manifest found")
    raise ImageError("not an OCI or docker archive (no manifest.json or index.json)")


class ImageStore:
    def __init__(self, root: str):
        self.root = root
        self._lock = threading.Lock()
        os.makedirs(root, mode=0o700, exist_ok=True)

    def _index_path(self) -> str:
        return os.path.join(self.root, "index.json")

    def _index(self) -> dict:
        try:
            with open(self._index_path()) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def _write_index(self, index: dict) -> None:
        tmp = self._index_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(index, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self._index_path())

    def import_archive(self, name: str, archive: str) -> dict:
        name = normalize(name)
        if not os.path.isfile(archive):
            raise ImageError(f"import {name}: {archive}: no such file")
        try:
            outer = tarfile.open(archive, "r:*")
        except (tarfile.TarError, OSError) as e:
            raise ImageError(f"import {name}: {archive}: not a tar archive: {e}") from None
        with outer:
            config, layers, image_id = read_archive(outer)
            image_id = image_id[:64]
            final = os.path.join(self.root, image_id)
            if not os.path.isdir(final):
                tmp = tempfile.mkdtemp(prefix=".import-", dir=self.root)
                try:
                    rootfs = os.path.join(tmp, "rootfs")
                    os.makedirs(rootfs, mode=0o755)
                    for path in layers:
                        try:
                            with _open_layer(outer, path) as layer:
                                apply_layer(layer, rootfs)
                        except (tarfile.TarError, KeyError, OSError) as e:
                            raise ImageError(f"import {name}: layer {path}: {e}") from None
                    meta = {"id": image_id, "config": config.get("config") or {},
                            "layers": len(layers), "created": time.time(),
                            "size": _du(rootfs)}
                    with open(os.path.join(tmp, "image.json"), "w") as f:
                        json.dump(meta, f)
                    os.rename(tmp, final)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
        with self._lock:
            index = self._index()
            index[name] = image_id
            self._write_index(index)
        return self.get(name)

    def get(self, name: str) -> dict | None:
        image_id = self._index().get(normalize(name))
        if image_id is None:
            return None
        try:
            with open(os.path.join(self.root, image_id, "image.json")) as f:
                meta = json.load(f)
        except OSError:
            return None
        return {**meta, "name": normalize(name), "rootfs": os.path.join(self.root, image_id,
                                                                         "rootfs")}

    def list(self) -> list[dict]:
        return [img for img in (self.get(n) for n in sorted(self._index())) if img]

    def remove(self, name: str, in_use: set[str]) -> bool:
        name = normalize(name)
        with self._lock:
            index = self._index()
            image_id = index.pop(name, None)
            if image_id is None:
                return False
            if image_id in in_use:
                raise ImageError(f"image {name} is used by a pod")
            self._write_index(index)
            if image_id not in index.values():
                shutil.rmtree(os.path.join(self.root, image_id), ignore_errors=True)
        return True


def _du(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for fn in files:
            try:
                total += os.lstat(os.path.join(dirpath, fn)).st_size
            except OSError:
                pass
    return total

"""The offline image store: `podnetctl image import NAME ARCHIVE` reads an OCI or a docker
archive (what `podman save` writes), checks it (image_archive: documents, digests, limits),
applies its layers in order with their whiteouts into one read-only root directory per image
(layer_unpack: nothing leaves the root) and keeps the image config (Entrypoint, Cmd, Env,
WorkingDir, User). A failed import leaves nothing behind.

Layout: <root>/index.json {name: id}; <root>/<id>/rootfs/; <root>/<id>/image.json, where id
is the config's sha256 (64 hex, checked before it is ever used as a path).
Blocking functions: called off the event loop."""
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import time
import zlib

from ..image_names import normalize
from .image_archive import ImageError, ImageSpec, LayerRef, Limits, read_image
from .layer_unpack import Budget, LayerUnpacker

__all__ = ["ImageError", "ImageStore", "Limits", "normalize"]

log = logging.getLogger(__name__)

IMAGE_ID_RE = re.compile(r"[0-9a-f]{64}\Z")
TMP_PREFIX = ".import-"
MAX_OUTER_LINK_HOPS = 8
_CHUNK = 1 << 20
# what a corrupt layer stream raises from gzip, zlib and tarfile
_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, OverflowError)


def _check_name(name: str) -> str:
    if not name or len(name) > 512 or any(c.isspace() or not c.isprintable() for c in name):
        raise ImageError(f"image name {name[:80]!r} is empty, too long or has spaces or "
                         "control characters")
    return name


class _Archive:
    """The outer tar, read-only and random access; members by normalized name. Implements
    image_archive.ArchiveReader."""

    def __init__(self, path: str, limits: Limits):
        try:  # non-blocking open: a FIFO or a device must not hang the import thread
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise ImageError(e.strerror) from None
        file = os.fdopen(fd, "rb")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageError("not a regular file")
            os.set_blocking(fd, True)
            gzipped = file.read(2) == b"\x1f\x8b"  # `podman save | gzip` too
            file.seek(0)
            try:
                self.tar = tarfile.open(fileobj=file, mode="r:gz" if gzipped else "r:")
            except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
                raise ImageError(f"not a tar archive: {e}") from None
            self.file = file
            self.members: dict[str, tarfile.TarInfo] = {}
            try:
                for count, m in enumerate(self.tar, 1):
                    if count > limits.max_entries:
                        raise ImageError(f"more than {limits.max_entries} members "
                                         "(max_entries)")
                    self.members[_norm(m.name)] = m  # the last one wins, as in tar
            except _STREAM_ERRORS as e:
                raise ImageError(f"corrupt tar archive: {e}") from None
        except BaseException:
            file.close()
            raise

    def close(self) -> None:
        self.tar.close()
        self.file.close()

    def has(self, name: str) -> bool:
        return _norm(name) in self.members

    def member(self, name: str) -> tarfile.TarInfo:
        """The regular file `name` names, following the archive's own links (docker save
        links duplicate layers), boundedly."""
        key = _norm(name)
        for _ in range(MAX_OUTER_LINK_HOPS):
            m = self.members.get(key)
            if m is None:
                raise ImageError(f"{name} is missing from the archive")
            if m.isreg():
                return m
            if m.issym():
                key = _norm(os.path.join(os.path.dirname(key), m.linkname))
            elif m.islnk():
                key = _norm(m.linkname)
            else:
                raise ImageError(f"{name} is not a file in the archive")
        raise ImageError(f"{name}: too many links in the archive")

    def open(self, m: tarfile.TarInfo):
        return self.tar.extractfile(m)

    def read(self, name: str, limit: int, limit_name: str) -> bytes:
        m = self.member(name)
        if m.size > limit:
            raise ImageError(f"{name} is {m.size} bytes, over the limit of {limit} "
                             f"({limit_name})")
        try:
            data = self.open(m).read()
        except _STREAM_ERRORS as e:
            raise ImageError(f"{name}: {e}") from None
        if len(data) != m.size:
            raise ImageError(f"{name}: truncated ({len(data)} of {m.size} bytes)")
        return data


def _norm(name: str) -> str:
    return "/".join(p for p in os.path.normpath("/" + name).split("/") if p)


class _Hashing:
    """A read-only stream that hashes (and counts) what passes through it."""

    def __init__(self, raw, charge=None):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.charge = charge

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if self.charge:
            self.charge(len(data))
        self.sha.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def _apply_layer(archive: _Archive, layer: LayerRef, unpacker: LayerUnpacker,
                 limits: Limits) -> None:
    m = archive.member(layer.path)
    if m.size > limits.max_blob_bytes:
        raise ImageError(f"is {m.size} bytes, over the limit of {limits.max_blob_bytes} "
                         "(max_blob_bytes)")
    if layer.size is not None and layer.size != m.size:
        raise ImageError(f"is {m.size} bytes, its descriptor says {layer.size}")
    magic = archive.open(m).read(4)
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        raise ImageError("zstd-compressed layers are not supported (gzip or uncompressed)")
    blob = _Hashing(archive.open(m))
    inner = gzip.GzipFile(fileobj=blob, mode="rb") if magic.startswith(b"\x1f\x8b") else blob
    diff = _Hashing(inner, charge=unpacker.budget.bytes)
    try:
        with tarfile.open(fileobj=diff, mode="r|") as tar:
            unpacker.apply(tar)
        diff.drain()
        blob.drain()
    except ImageError:
        raise
    except _STREAM_ERRORS as e:
        raise ImageError(f"corrupt layer: {e}") from None
    if layer.digest and blob.digest() != layer.digest:
        raise ImageError(f"blob digest is {blob.digest()}, the manifest says {layer.digest}")
    if diff.digest() != layer.diff_id:
        raise ImageError(f"uncompressed digest is {diff.digest()}, the config's "
                         f"rootfs.diff_ids say {layer.diff_id}")


def _du(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for fn in files:
            try:
                total += os.lstat(os.path.join(dirpath, fn)).st_size
            except OSError:
                pass
    return total


class ImageStore:
    def __init__(self, root: str, limits: Limits = Limits()):
        self.root = root
        self.limits = limits
        self._lock = threading.Lock()
        os.makedirs(root, mode=0o700, exist_ok=True)
        for entry in os.listdir(root):  # imports a crash interrupted
            if entry.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)

    def _index_path(self) -> str:
        return os.path.join(self.root, "index.json")

    def _index(self) -> dict:
        try:
            with open(self._index_path()) as f:
                index = json.load(f)
        except FileNotFoundError:
            return {}
        # entries an older podnet wrote from an unchecked digest are never used as paths
        return {k: v for k, v in index.items() if isinstance(v, str)} \
            if isinstance(index, dict) else {}

    def _write_index(self, index: dict) -> None:
        tmp = self._index_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(index, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self._index_path())

    def _image_dir(self, image_id: str) -> str | None:
        return os.path.join(self.root, image_id) if IMAGE_ID_RE.match(image_id) else None

    def import_archive(self, name: str, archive: str, source: str = "") -> dict:
        """Import the archive at path `archive` as `name`; `source` names where it came from
        in messages (a registry pull's temporary archive is no use to a user)."""
        name = normalize(_check_name(name))
        source = source or archive
        started = time.monotonic()
        try:
            image_id = self._import(archive)
        except ImageError as e:
            raise ImageError(f"import image {name} from {source}: {e}") from None
        except OSError as e:  # the store's own disk (full, read-only): still one clear line
            raise ImageError(f"import image {name} from {source}: {e}") from None
        with self._lock:
            index = self._index()
            index[name] = image_id
            self._write_index(index)
        log.info("imported image %s (%s) from %s in %.2fs", name, image_id[:12], source,
                 time.monotonic() - started)
        return self.get(name)

    def _import(self, path: str) -> str:
        archive = _Archive(path, self.limits)
        try:
            spec = read_image(archive, self.limits)
            final = self._image_dir(spec.image_id)
            assert final is not None  # read_image checked the digest
            if os.path.isdir(final):
                # content-addressed and verified when it was made: the same image
                return spec.image_id
            tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.root)
            try:
                self._unpack(archive, spec, tmp)
                try:
                    os.rename(tmp, final)
                except OSError:
                    if not os.path.isdir(final):
                        raise
                    shutil.rmtree(tmp)  # a concurrent import of the same image won
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return spec.image_id
        finally:
            archive.close()

    def _unpack(self, archive: _Archive, spec: ImageSpec, tmp: str) -> None:
        rootfs = os.path.join(tmp, "rootfs")
        os.mkdir(rootfs, 0o755)
        unpacker = LayerUnpacker(rootfs, Budget(self.limits))
        try:
            for i, layer in enumerate(spec.layers, 1):
                try:
                    _apply_layer(archive, layer, unpacker, self.limits)
                except ImageError as e:
                    raise ImageError(f"layer {i} ({layer.path}): {e}") from None
                except _STREAM_ERRORS as e:  # the outer archive itself is corrupt there
                    raise ImageError(f"layer {i} ({layer.path}): {e}") from None
        finally:
            unpacker.close()
        if unpacker.skipped_devices:
            log.warning("image %s: skipped %d device nodes (devices are not created)",
                        spec.image_id[:12], unpacker.skipped_devices)
        meta = {"id": spec.image_id, "config": spec.config, "layers": len(spec.layers),
                "created": time.time(), "size": _du(rootfs)}
        with open(os.path.join(tmp, "image.json"), "w") as f:
            json.dump(meta, f)

    def get(self, name: str) -> dict | None:
        image_id = self._index().get(normalize(name))
        image_dir = image_id and self._image_dir(image_id)
        if not image_dir:
            return None
        try:
            with open(os.path.join(image_dir, "image.json")) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        return {**meta, "name": normalize(name), "rootfs": os.path.join(image_dir, "rootfs")}

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
            image_dir = self._image_dir(image_id)
            if image_dir and image_id not in index.values():
                shutil.rmtree(image_dir, ignore_errors=True)
        return True

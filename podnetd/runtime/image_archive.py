"""What an image archive says, checked: the pure half of `podnetctl image import`.

It reads the documents of an OCI layout archive (index.json -> manifest -> config, all by
digest) or of a docker archive (manifest.json -> config, layer paths; what `podman save` and
`docker save` write), checks every JSON type, every digest (`sha256:` + 64 lowercase hex, and
the blob's hash), the counts and sizes against Limits, and returns an ImageSpec: the image id,
the runtime config and the layers with the digests their bytes must have. No filesystem access:
the caller hands in an ArchiveReader; the layer bytes are checked while they are unpacked."""
import dataclasses
import hashlib
import json
import platform
import re
from typing import Any, Protocol

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MAX_INDEX_DEPTH = 4


class ImageError(Exception):
    """A bad archive or image (the message says which part and why)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on what one import may read and write; each error names the field it hit."""
    max_json_bytes: int = 4 << 20          # one manifest, index or config document
    max_blob_bytes: int = 16 << 30         # one archive member (a layer as stored)
    max_unpacked_bytes: int = 64 << 30     # all layers' uncompressed tar streams together
    max_entries: int = 1_000_000           # archive members, and layer entries of all layers
    max_path_bytes: int = 4096             # an entry's name or link target (PATH_MAX)
    max_layers: int = 256


@dataclasses.dataclass(frozen=True)
class LayerRef:
    path: str              # the member of the archive that holds the layer
    diff_id: str           # sha256 of the uncompressed tar (the config's rootfs.diff_ids)
    digest: str | None     # sha256 of the blob as stored (OCI); None in docker archives
    size: int | None = None  # the blob's size as its descriptor says (OCI)


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    image_id: str          # 64 hex: the config's sha256, as podman shows it
    config: dict           # the runtime config, validated (Entrypoint, Cmd, Env, ...)
    layers: list[LayerRef]
    layout: str            # "oci" or "docker"


class ArchiveReader(Protocol):
    def has(self, name: str) -> bool: ...

    def read(self, name: str, limit: int, limit_name: str) -> bytes:
        """The member's bytes; ImageError when it is missing, not a file or over limit."""


def check_digest(value: Any, what: str) -> str:
    if not isinstance(value, str) or not DIGEST_RE.match(value):
        raise ImageError(f"{what}: digest {_short(value)} is not 'sha256:' and 64 lowercase "
                         "hex digits")
    return value


def blob_path(digest: str) -> str:
    """The member holding a blob; only ever called with a checked digest."""
    return "blobs/sha256/" + check_digest(digest, "blob")[len("sha256:"):]


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ImageError(f"{what}: not JSON: {str(e)[:200]}") from None


# -- typed field access: every wrong type is an ImageError naming the field --------------

def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), "a value")


def _want(value: Any, typ: type, what: str) -> Any:
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        expected = _type_name(typ()) if typ is not type(None) else "null"
        raise ImageError(f"{what}: expected {expected}, got {_type_name(value)}")
    return value


def _get(doc: dict, key: str, typ: type, what: str, required: bool = True) -> Any:
    if key not in doc or doc[key] is None:
        if required:
            raise ImageError(f"{what}: {key!r} is missing")
        return None
    return _want(doc[key], typ, f"{what}: {key!r}")


def _str_list(value: Any, what: str) -> list[str]:
    for i, item in enumerate(_want(value, list, what)):
        _want(item, str, f"{what}[{i}]")
    return value


# -- documents ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Descriptor:
    digest: str
    size: int | None
    media_type: str
    platform: dict | None


def parse_descriptor(doc: Any, what: str) -> Descriptor:
    _want(doc, dict, what)
    digest = check_digest(_get(doc, "digest", str, what), what)
    size = _get(doc, "size", int, what, required=False)
    if size is not None and size < 0:
        raise ImageError(f"{what}: negative size {size}")
    return Descriptor(digest, size, _get(doc, "mediaType", str, what, required=False) or "",
                      _get(doc, "platform", dict, what, required=False))


def parse_index(doc: Any, what: str) -> list[Descriptor]:
    _want(doc, dict, what)
    manifests = _get(doc, "manifests", list, what)
    if not manifests:
        raise ImageError(f"{what}: 'manifests' is empty")
    return [parse_descriptor(d, f"{what}: manifests[{i}]") for i, d in enumerate(manifests)]


def parse_manifest(doc: Any, what: str, limits: Limits) -> tuple[Descriptor, list[Descriptor]]:
    _want(doc, dict, what)
    config = parse_descriptor(_get(doc, "config", dict, what), f"{what}: config")
    layers = _get(doc, "layers", list, what)
    if len(layers) > limits.max_layers:
        raise ImageError(f"{what}: {len(layers)} layers is over the limit of "
                         f"{limits.max_layers} (max_layers)")
    descs = [parse_descriptor(d, f"{what}: layers[{i}]") for i, d in enumerate(layers)]
    for i, d in enumerate(descs):
        if "zstd" in d.media_type:
            raise ImageError(f"{what}: layers[{i}]: {d.media_type} is not supported "
                             "(gzip or uncompressed layers only)")
    return config, descs


# What the runtime reads from the config, with the types it relies on; other keys are dropped.
_CONFIG_FIELDS = {"Entrypoint": "strs", "Cmd": "strs", "Env": "strs", "WorkingDir": str,
                  "User": str, "StopSignal": str, "Labels": "labels", "ExposedPorts": dict,
                  "Volumes": dict}


def parse_config(doc: Any, what: str) -> tuple[dict, list[str]]:
    """(runtime config, rootfs.diff_ids) of an image config document."""
    _want(doc, dict, what)
    runtime = _get(doc, "config", dict, what, required=False) or {}
    checked = {}
    for key, kind in _CONFIG_FIELDS.items():
        value = runtime.get(key)
        if value is None:
            continue
        field = f"{what}: config.{key}"
        if kind == "strs":
            _str_list(value, field)
        elif kind == "labels":
            for k, v in _want(value, dict, field).items():
                _want(v, str, f"{field}[{k!r}]")
        else:
            _want(value, kind, field)
        checked[key] = value
    rootfs = _get(doc, "rootfs", dict, what)
    diff_ids = _str_list(_get(rootfs, "diff_ids", list, f"{what}: rootfs"),
                         f"{what}: rootfs.diff_ids")
    for i, d in enumerate(diff_ids):
        check_digest(d, f"{what}: rootfs.diff_ids[{i}]")
    return checked, diff_ids


def parse_docker_manifest(doc: Any, limits: Limits) -> tuple[str, list[str]]:
    """(config path, layer paths) of the first image of a docker archive's manifest.json."""
    what = "manifest.json"
    if not _want(doc, list, what):
        raise ImageError(f"{what}: expected a non-empty list")
    entry = _want(doc[0], dict, f"{what}[0]")
    config = _get(entry, "Config", str, f"{what}[0]")
    layers = _str_list(_get(entry, "Layers", list, f"{what}[0]"), f"{what}[0]: 'Layers'")
    if len(layers) > limits.max_layers:
        raise ImageError(f"{what}: {len(layers)} layers is over the limit of "
                         f"{limits.max_layers} (max_layers)")
    return config, layers


# -- the whole archive -------------------------------------------------------------------

def read_image(archive: ArchiveReader, limits: Limits = Limits()) -> ImageSpec:
    if archive.has("manifest.json"):
        return _read_docker(archive, limits)
    if archive.has("index.json"):
        return _read_oci(archive, limits)
    raise ImageError("not an OCI or docker archive (no manifest.json or index.json)")


def _read_json(archive: ArchiveReader, name: str, limits: Limits, what: str) -> tuple[Any, bytes]:
    data = archive.read(name, limits.max_json_bytes, "max_json_bytes")
    return parse_json(data, what), data


def _read_docker(archive: ArchiveReader, limits: Limits) -> ImageSpec:
    doc, _ = _read_json(archive, "manifest.json", limits, "manifest.json")
    config_path, layer_paths = parse_docker_manifest(doc, limits)
    config_doc, config_bytes = _read_json(archive, config_path, limits,
                                          f"config {config_path}")
    config, diff_ids = parse_config(config_doc, f"config {config_path}")
    if len(diff_ids) != len(layer_paths):
        raise ImageError(f"manifest.json lists {len(layer_paths)} layers, its config "
                         f"{config_path} {len(diff_ids)} rootfs.diff_ids")
    return ImageSpec(hashlib.sha256(config_bytes).hexdigest(), config,
                     [LayerRef(p, d, None) for p, d in zip(layer_paths, diff_ids)], "docker")


def _read_blob(archive: ArchiveReader, desc: Descriptor, limits: Limits, what: str) -> Any:
    data = archive.read(blob_path(desc.digest), limits.max_json_bytes, "max_json_bytes")
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != desc.digest:
        raise ImageError(f"{what}: blob {desc.digest} has digest {actual}")
    if desc.size is not None and desc.size != len(data):
        raise ImageError(f"{what}: blob {desc.digest} is {len(data)} bytes, its descriptor "
                         f"says {desc.size}")
    return parse_json(data, f"{what} {desc.digest}")


def _pick(manifests: list[Descriptor]) -> Descriptor:
    """The manifest for this machine when an index names platforms, else the first."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    for d in manifests:
        p = d.platform or {}
        if p.get("os") in (None, "linux") and p.get("architecture") in (None, arch):
            return d
    return manifests[0]


def _read_oci(archive: ArchiveReader, limits: Limits) -> ImageSpec:
    doc, _ = _read_json(archive, "index.json", limits, "index.json")
    what = "index.json"
    for _ in range(MAX_INDEX_DEPTH):
        desc = _pick(parse_index(doc, what))
        what = f"manifest {desc.digest}"
        doc = _read_blob(archive, desc, limits, "manifest")
        is_index = desc.media_type in INDEX_TYPES or (
            isinstance(doc, dict) and "manifests" in doc and "layers" not in doc)
        if is_index:
            continue
        config_desc, layer_descs = parse_manifest(doc, what, limits)
        config, diff_ids = parse_config(_read_blob(archive, config_desc, limits, "config"),
                                        f"config {config_desc.digest}")
        if len(diff_ids) != len(layer_descs):
            raise ImageError(f"{what} lists {len(layer_descs)} layers, its config "
                             f"{len(diff_ids)} rootfs.diff_ids")
        return ImageSpec(config_desc.digest[len("sha256:"):], config,
                         [LayerRef(blob_path(d.digest), diff, d.digest, d.size)
                          for d, diff in zip(layer_descs, diff_ids)], "oci")
    raise ImageError(f"index.json: more than {MAX_INDEX_DEPTH} nested indexes")

"""The image store reads what `podman save` writes (docker-archive and oci-archive), within
its limits; the archive parser never fails with anything but an ImageError. (Hostile archives
through the daemon: test_runtime_image_attacks.py.)"""
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from image_archives import archive, entry, f, gz, hard, layer, sym
from testlib import unique
from runtime_lib import busybox_archive
from podnetd.runtime import image_archive
from podnetd.runtime.images import ImageError, ImageStore, Limits
from podnetd.runtime.layer_unpack import split_name


@pytest.fixture
def work():
    d = tempfile.mkdtemp(prefix=f"{unique('im')}-")
    pm = ["podman", "--root", f"{d}/root", "--runroot", f"{d}/runroot",
          "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    yield d, pm
    subprocess.run([*pm, "system", "reset", "-f"], capture_output=True)
    subprocess.run(["umount", "-R", f"{d}/root"], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_podman_save_archives_import(work):
    d, pm = work
    store = ImageStore(os.path.join(d, "store"))
    rootfs = store.import_archive("busybox", busybox_archive())["rootfs"]
    with tarfile.open(os.path.join(d, "rootfs.tar"), "w") as t:
        t.add(rootfs, arcname=".")
    subprocess.run([*pm, "import", "--change", "CMD=[\"sh\"]", f"{d}/rootfs.tar",
                    "localhost/bbsaved:1"], check=True, capture_output=True)
    for fmt in ("docker-archive", "oci-archive"):
        out = os.path.join(d, f"{fmt}.tar")
        subprocess.run([*pm, "save", "--format", fmt, "-o", out, "localhost/bbsaved:1"],
                       check=True, capture_output=True)
        img = store.import_archive(f"saved-{fmt}", out)
        assert img["config"].get("Cmd") == ["sh"], img
        assert os.path.islink(os.path.join(img["rootfs"], "bin", "sh"))
        assert os.path.isfile(os.path.join(img["rootfs"], "etc", "image-release"))
    names = [i["name"] for i in store.list()]
    assert "saved-docker-archive:latest" in names and "saved-oci-archive:latest" in names


def test_not_an_archive_is_one_clear_error(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar")
    with pytest.raises(ImageError, match="not a tar archive"):
        store.import_archive("x", str(bad))
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(ImageError, match="not an OCI or docker archive"):
        store.import_archive("x", str(empty))


# -- the busybox image, both layouts: whiteouts and opaque directories -------------------

@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_busybox_layers_whiteouts_and_opaque_dirs(tmp_path, fmt):
    from testlib import PY, REPO, sh
    path = str(tmp_path / "bb.tar")
    sh(PY, "-m", "podnetd.runtime.busybox_image", path, "--format", fmt, cwd=REPO)
    img = ImageStore(str(tmp_path / "store")).import_archive("bb", path)
    root = img["rootfs"]
    assert os.readlink(os.path.join(root, "bin", "sh")) == "busybox"
    assert os.readlink(os.path.join(root, "usr", "bin")) == "../bin"
    assert not os.path.lexists(os.path.join(root, "etc", "removed-by-layer2"))
    assert os.listdir(os.path.join(root, "opt")) == ["new"]
    assert stat.S_IMODE(os.stat(os.path.join(root, "tmp")).st_mode) == 0o1777
    assert img["config"]["Cmd"] == ["sh"] and img["layers"] == 2


# -- limits: each refusal names the limit and leaves nothing behind ----------------------

def _refused_cleanly(store: ImageStore, path: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        store.import_archive("limited", path)
    assert os.listdir(store.root) == [], "a refused import left something behind"


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_limits_name_themselves(tmp_path, fmt):
    many = layer(*[f(f"f{i}") for i in range(20)])
    _refused_cleanly(ImageStore(str(tmp_path / "s1"), Limits(max_entries=10)),
                     archive(fmt, str(tmp_path / "many.tar"), [many]), r"\(max_entries\)")
    big = layer(f("zeros", b"\0" * (4 << 20)))
    _refused_cleanly(ImageStore(str(tmp_path / "s2"), Limits(max_unpacked_bytes=1 << 20)),
                     archive(fmt, str(tmp_path / "bomb.tar"), [big], blobs=[gz(big)]),
                     r"\(max_unpacked_bytes\)")
    # a gzip bomb after the tar's end: the stream is still hashed, and still bounded
    small = layer(f("x"))
    padded = small + b"\0" * (4 << 20)
    _refused_cleanly(ImageStore(str(tmp_path / "s3"), Limits(max_unpacked_bytes=1 << 20)),
                     archive(fmt, str(tmp_path / "pad.tar"), [padded], blobs=[gz(padded)]),
                     r"\(max_unpacked_bytes\)")
    _refused_cleanly(ImageStore(str(tmp_path / "s4"), Limits(max_blob_bytes=4096)),
                     archive(fmt, str(tmp_path / "blob.tar"), [big]), r"\(max_blob_bytes\)")
    _refused_cleanly(ImageStore(str(tmp_path / "s5"), Limits(max_layers=2)),
                     archive(fmt, str(tmp_path / "layers.tar"), [small, small, small]),
                     r"\(max_layers\)")
    _refused_cleanly(ImageStore(str(tmp_path / "s6"), Limits(max_path_bytes=64)),
                     archive(fmt, str(tmp_path / "path.tar"), [layer(sym("l", "x" * 100))]),
                     r"\(max_path_bytes\)")
    _refused_cleanly(ImageStore(str(tmp_path / "s7"), Limits(max_json_bytes=100)),
                     archive(fmt, str(tmp_path / "json.tar"), [small]), r"\(max_json_bytes\)")


def test_interrupted_imports_are_cleaned_and_old_bad_ids_never_used_as_paths(tmp_path):
    """A store written before ids were checked may name a host path as an image id."""
    root = tmp_path / "store"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("keep")
    root.mkdir()
    (root / ".import-crashed").mkdir()
    (root / "index.json").write_text(json.dumps({"evil:latest": str(victim),
                                                 "rel:latest": "../victim"}))
    store = ImageStore(str(root))
    assert not (root / ".import-crashed").exists()
    assert store.get("evil") is None and store.list() == []
    assert store.remove("evil", set()) and store.remove("rel", set())
    assert (victim / "file").read_text() == "keep"


# -- the parser under random input: an ImageSpec or an ImageError, nothing else -----------

class _Files:
    """image_archive.ArchiveReader over a dict (the parser is pure)."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files

    def has(self, name):
        return name in self.files

    def read(self, name, limit, limit_name):
        if name not in self.files:
            raise ImageError(f"{name} is missing from the archive")
        if len(self.files[name]) > limit:
            raise ImageError(f"{name}: over the limit ({limit_name})")
        return self.files[name]


_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
            | st.floats(allow_nan=False) | st.text(max_size=12))
_json = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=3)
                     | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=12)
_digest = st.one_of(st.just("sha256:" + "a" * 64), st.just("sha256:/etc"), st.text(max_size=80),
                    st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True))


@st.composite
def _archives(draw):
    """Near-valid documents with any part swapped for random JSON or bytes, both layouts."""
    files: dict[str, bytes] = {}

    def maybe(valid):
        return draw(st.one_of(st.just(valid), st.just(valid), _json))

    def encode(doc) -> bytes:
        return draw(st.one_of(st.just(json.dumps(doc).encode()), st.binary(max_size=20)))

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        files["blobs/sha256/" + digest[7:]] = data
        return draw(st.one_of(st.just(digest), st.just(digest), _digest))

    n = draw(st.integers(0, 2))
    layer_digests = [draw(_digest) for _ in range(n)]
    cfg = encode(maybe({"config": maybe({"Cmd": maybe(["sh"]), "Env": maybe(["A=1"]),
                                         "Labels": maybe({"a": "b"})}),
                        "rootfs": maybe({"diff_ids": maybe(layer_digests)})}))
    if draw(st.booleans()):
        files["c.json"] = cfg
        files["manifest.json"] = encode(maybe([maybe({"Config": maybe("c.json"),
                                                     "Layers": maybe(["l"] * n)})]))
    else:
        manifest = encode(maybe({
            "config": maybe({"digest": blob(cfg), "size": maybe(len(cfg))}),
            "layers": maybe([maybe({"digest": d, "mediaType": maybe("x.tar")})
                             for d in layer_digests])}))
        inner = {"digest": blob(manifest), "mediaType": maybe("m"),
                 "platform": maybe({"os": "linux"})}
        if draw(st.booleans()):  # an index of an index
            nested = json.dumps({"manifests": [inner]}).encode()
            inner = {"digest": blob(nested), "mediaType": image_archive.INDEX_TYPES[0]}
        files["index.json"] = encode(maybe({"manifests": maybe([maybe(inner)])}))
    return files


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_archives())
def test_parser_gives_a_spec_or_an_image_error(files):
    try:
        spec = image_archive.read_image(_Files(files), Limits(max_json_bytes=1 << 16))
    except ImageError as e:
        assert str(e)
        return
    assert re.fullmatch(r"[0-9a-f]{64}", spec.image_id)
    assert all(image_archive.DIGEST_RE.match(l.diff_id) for l in spec.layers)
    # a layer path is a blob path made from a checked digest (OCI) or the manifest's string
    assert all(re.fullmatch(r"blobs/sha256/[0-9a-f]{64}", l.path) and l.digest
               for l in spec.layers if spec.layout == "oci")
    assert isinstance(spec.config, dict)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_entry_names_split_inside_the_root_or_refused(name):
    try:
        parts = split_name(name, Limits(max_path_bytes=200))
    except ImageError:
        return
    assert all(p not in ("", ".", "..") and "/" not in p for p in parts)


def _pax_layer(name: str, headers: dict) -> bytes:
    import io
    info = tarfile.TarInfo(name)
    info.size, info.pax_headers = 2, headers
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"x\n"))
    return buf.getvalue()


@pytest.mark.parametrize("headers,error", [
    ({"mtime": "inf"}, None), ({"mtime": "nan"}, None), ({"mtime": "-1e300"}, None),
    ({"uid": "99999999999"}, "uid 99999999999 is out of range"),
    ({"path": "a\x00b"}, "contains a NUL byte"),
    ({"path": "../../x"}, r"'\.\.' component"),
], ids=["mtime-inf", "mtime-nan", "mtime-negative", "uid-huge", "nul", "pax-dotdot"])
def test_odd_pax_headers_are_clamped_or_refused(tmp_path, headers, error):
    lay = _pax_layer("file", headers)
    store = ImageStore(str(tmp_path / "store"))
    path = archive("docker", str(tmp_path / "a.tar"), [lay])
    if error:
        _refused_cleanly(store, path, error)
        return
    root = store.import_archive("odd", path)["rootfs"]
    files = os.listdir(root)
    assert len(files) == 1 and os.lstat(os.path.join(root, files[0])).st_mtime >= 0


def test_truncated_archives_are_one_clear_error(tmp_path):
    """Cut anywhere, documents first so that the cut lands in a layer too."""
    from image_archives import config, sha, write_tar
    lay = layer(f("big", os.urandom(200_000)))
    cfg = config([lay])
    manifest = json.dumps([{"Config": "c.json", "Layers": ["l.tar"]}]).encode()
    full = write_tar(str(tmp_path / "full.tar"),
                     [("manifest.json", manifest), ("c.json", cfg), ("l.tar", lay)])
    data = open(full, "rb").read()
    for i, cut in enumerate([100, 600, 1600, 3000, 50_000, 150_000, len(data) - 30_000]):
        path = tmp_path / f"cut{i}.tar"
        path.write_bytes(data[:cut])
        _refused_cleanly(ImageStore(str(tmp_path / f"s{i}")), str(path), "import image limited")
    assert ImageStore(str(tmp_path / "ok")).import_archive("ok", full)["id"] == sha(cfg)
    zipped = tmp_path / "full.tar.gz"  # `podman save | gzip`
    zipped.write_bytes(gz(data))
    assert ImageStore(str(tmp_path / "ok2")).import_archive("ok", str(zipped))["id"] == sha(cfg)


# -- the unpacker under random layers: nothing outside the root ever changes -------------

_component = st.sampled_from(["a", "b", "c", "..", ".", "", ".wh.a", ".wh.b", ".wh..wh..opq"])
_names = st.one_of(  # mostly a few plain names, so that entries meet each other
    st.sampled_from(["b", "a", "a/b", "b/c"]),
    st.builds(lambda absolute, parts: ("/" if absolute else "") + "/".join(parts),
              st.booleans(), st.lists(_component, min_size=1, max_size=3)))


@st.composite
def _entries(draw, outside: str):
    """A layer as a small program: links mostly aim at the outside or at earlier entries."""
    # hypothesis favours the first choices: the dangerous ones come first
    aims = st.sampled_from([outside + "/secret", outside, "../../outside/secret", "/", "..",
                            "../outside", "a", "b"])
    out, names = [], []
    for _ in range(draw(st.integers(1, 10))):
        name = draw(_names)
        kind = draw(st.sampled_from(["sym", "hard", "file", "dir", "fifo", "chr"]))
        earlier = st.sampled_from(names or ["a"])
        if kind == "dir":
            out.append(entry(name, tarfile.DIRTYPE, mode=draw(st.sampled_from([0o755, 0o4777]))))
        elif kind == "file":
            out.append(f(name, b"data\n", mode=0o4777, uid=4242))
        elif kind == "sym":
            out.append(sym(name, draw(st.one_of(aims, _names)) or "x"))
        elif kind == "hard":
            out.append(hard(name, draw(st.one_of(earlier, aims, _names)),
                            mode=0o4777, uid=4242))
        elif kind == "fifo":
            out.append(entry(name, tarfile.FIFOTYPE))
        else:
            out.append(entry(name, tarfile.CHRTYPE, devmajor=1, devminor=3))
        names.append(name)
    return out


def _tree(top: str) -> dict:
    out = {}
    for dirpath, dirs, files in os.walk(top):
        for name in [".", *dirs, *files]:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            out[p] = (st_.st_mode, st_.st_uid, st_.st_nlink, st_.st_mtime_ns)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(st.data())
def test_random_layers_never_reach_outside_the_root(data):
    import io
    from podnetd.runtime.layer_unpack import Budget, LayerUnpacker
    with tempfile.TemporaryDirectory(prefix=f"{unique('unpack')}-") as top:
        root, outside = os.path.join(top, "root"), os.path.join(top, "outside")
        os.mkdir(root)
        os.mkdir(outside)
        with open(os.path.join(outside, "secret"), "w") as fh:
            fh.write("secret\n")
        os.chmod(os.path.join(outside, "secret"), 0o600)
        before = _tree(outside)
        layers = [layer(*data.draw(_entries(outside))) for _ in range(data.draw(st.integers(1, 3)))]
        unpacker = LayerUnpacker(root, Budget(Limits()))
        try:
            for blob in layers:
                with tarfile.open(fileobj=io.BytesIO(blob), mode="r|") as tar:
                    unpacker.apply(tar)
        except ImageError:
            pass
        finally:
            unpacker.close()
        assert _tree(outside) == before
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                st_ = os.lstat(os.path.join(dirpath, name))
                assert not (stat.S_ISCHR(st_.st_mode) or stat.S_ISBLK(st_.st_mode))

"""Hostile image archives, imported the way users do (`podnetctl image import` through a
running podnetd), in both layouts: nothing on the host changes, nothing is left behind, and
every refusal is one clear FAILED_PRECONDITION line, never UNKNOWN or a traceback."""
import gzip
import json
import os
import shutil
import stat
import tarfile
import tempfile

import pytest

from image_archives import archive, config, d, entry, f, gz, hard, layer, sha, sym, write_tar
from runtime_lib import RuntimeNode
from testlib import Netns, unique

FORMATS = ["oci", "docker"]


@pytest.fixture(scope="module")
def node():
    spaces = Netns()
    n = None
    try:
        n = RuntimeNode(spaces.add("ia"), "10.78.9.0/24").start()
        yield n
    finally:
        if n:
            n.cleanup()
        spaces.cleanup()


@pytest.fixture
def host():
    """A host directory an archive aims at: a root-owned 0600 secret and a directory."""
    top = tempfile.mkdtemp(prefix=f"{unique('victim')}-")
    os.chmod(top, 0o755)
    secret = os.path.join(top, "secret")
    with open(secret, "wb") as fh:
        fh.write(b"secret\n")
    os.chmod(secret, 0o600)
    os.mkdir(os.path.join(top, "keep"))
    with open(os.path.join(top, "keep", "file"), "w") as fh:
        fh.write("keep\n")
    yield top
    shutil.rmtree(top, ignore_errors=True)


def snapshot(top: str) -> dict:
    """Everything about the host tree an attack could change."""
    out = {}
    for dirpath, dirs, files in os.walk(top):
        for name in [".", *dirs, *files]:
            p = os.path.normpath(os.path.join(dirpath, name))
            st = os.lstat(p)
            data = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None
            out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, data)
    return out


def images_dir(node) -> str:
    return os.path.join(node.daemon.state_dir, "runtime", "images")


def store(node) -> set[str]:
    return {e for e in os.listdir(images_dir(node)) if e != "index.json"}


def rootfs(node, cfg: bytes) -> str:
    return os.path.join(images_dir(node), sha(cfg), "rootfs")


def imp(node, name: str, path: str):
    return node.ctl("image", "import", name, path, check=False)


def refused(node, proc, *fragments: str) -> None:
    err = proc.stderr
    assert proc.returncode == 1, (proc.stdout, err)
    assert err.startswith("podnetctl: failed_precondition: import image "), err
    assert "Traceback" not in err and "unknown" not in err.split(":")[1], err
    for frag in fragments:
        assert frag in err, (frag, err)
    assert "Traceback" not in node.daemon.log()


@pytest.fixture
def clean(node):
    """The store holds exactly what it held before a refused import: no partial image, no
    temporary directory."""
    before = store(node)
    yield
    assert store(node) == before


# -- links -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_hard_link_to_symlink_to_host_file_is_refused(node, host, clean, tmp_path, fmt):
    secret = os.path.join(host, "secret")
    before = snapshot(host)
    evil = layer(sym("evil", secret),
                 hard("pwn", "evil", mode=0o4777, uid=4242, gid=4242))
    proc = imp(node, f"evil-{fmt}", archive(fmt, str(tmp_path / "a.tar"), [evil]))
    st = os.stat(secret)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_nlink) == (0o600, 0, 1)
    assert snapshot(host) == before
    refused(node, proc, "layer 1", "entry 'pwn'", "is not a regular file", "a symlink")


@pytest.mark.parametrize("fmt", FORMATS)
def test_attributes_never_set_through_a_symlink(node, host, clean, tmp_path, fmt):
    """A symlink to a host file, then the same name as a directory, file or FIFO entry with
    mode and owner: the link is replaced inside the root, the host file is untouched."""
    secret = os.path.join(host, "secret")
    before = snapshot(host)
    layers = [layer(sym("a", secret), sym("b", host), sym("c", secret)),
              layer(f("a", b"mine\n", mode=0o4777, uid=4242), d("b", mode=0o777),
                    entry("c", tarfile.FIFOTYPE, mode=0o666, uid=7))]
    cfg = config(layers)
    proc = imp(node, f"attrs-{fmt}", archive(fmt, str(tmp_path / "a.tar"), layers))
    assert proc.returncode == 0, proc.stderr
    assert snapshot(host) == before
    root = rootfs(node, cfg)
    st = os.lstat(os.path.join(root, "a"))
    assert stat.S_ISREG(st.st_mode) and st.st_mode & 0o7777 == 0o4777 and st.st_uid == 4242
    assert open(os.path.join(root, "a"), "rb").read() == b"mine\n"
    assert stat.S_ISDIR(os.lstat(os.path.join(root, "b")).st_mode)
    assert stat.S_ISFIFO(os.lstat(os.path.join(root, "c")).st_mode)
    node.ctl("image", "rm", f"attrs-{fmt}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_symlinked_parents_resolve_inside_the_root(node, host, tmp_path, fmt):
    """`x -> /host/dir` then `x/new` writes into the image's own /host/dir, as podman's
    chroot unpacker does; `../../..` stops at the root; usrmerge-style absolute links work."""
    tool = f"{unique('tool')}"
    before = snapshot(host)
    layers = [layer(d("usr"), d("usr/bin"), sym("bin", "/usr/bin"),
                    sym("x", host), sym("up", "../../../../../../" + host.lstrip("/"))),
              layer(f(f"bin/{tool}", b"tool\n"), f("x/new", b"in\n"), f("up/keep/file", b"img\n"),
                    f(os.path.join(host, "abs"), b"absolute name\n"),
                    f("x/other")),
              layer(f("x/.wh.secret", b""), f("x/keep/.wh..wh..opq", b""))]
    cfg = config(layers)
    proc = imp(node, f"parents-{fmt}", archive(fmt, str(tmp_path / "a.tar"), layers))
    assert proc.returncode == 0, proc.stderr
    assert snapshot(host) == before, "the host directory changed"
    assert not os.path.exists(f"/usr/bin/{tool}")
    root = rootfs(node, cfg)
    inside = os.path.join(root, host.lstrip("/"))
    assert open(os.path.join(root, "usr", "bin", tool), "rb").read() == b"tool\n"
    assert open(os.path.join(inside, "new"), "rb").read() == b"in\n"
    assert open(os.path.join(inside, "abs"), "rb").read() == b"absolute name\n"
    # the opaque whiteout emptied the image's keep/ (what `up/keep/file` put there)
    assert os.listdir(os.path.join(inside, "keep")) == []
    node.ctl("image", "rm", f"parents-{fmt}")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", [
    ("dotdot", [f("../../escape")], "'..' component"),
    ("hard-dotdot", [hard("h", "../../etc/passwd")], "'..' component"),
    ("hard-dir", [d("dir"), hard("h", "dir")], "a directory"),
    ("hard-absolute", [hard("h", "/etc/passwd")], "does not exist"),
    ("hard-fifo", [entry("p", tarfile.FIFOTYPE), hard("h", "p")], "a FIFO"),
    ("hard-missing", [hard("h", "nosuch")], "does not exist"),
    ("hard-through-host-link", [sym("l", "/etc"), hard("h", "l/passwd")], "does not exist"),
    ("loop", [sym("a", "b"), sym("b", "a"), f("a/x")], "too many levels of symbolic links"),
    ("self-loop", [sym("etc", "/etc"), f("etc/x")], "too many levels of symbolic links"),
    ("long-name", [f("a" * 5000)], "max_path_bytes"),
    ("long-component", [f("a" * 300)], "longer than 255 bytes"),
    ("file-as-parent", [f("file"), f("file/x")], "is not a directory"),
], ids=lambda c: c[0] if isinstance(c, tuple) else c)
def test_bad_entries_are_refused(node, host, clean, tmp_path, fmt, case):
    name, entries, message = case
    before = snapshot(host)
    proc = imp(node, f"bad-{name}-{fmt}", archive(fmt, str(tmp_path / "a.tar"), [layer(*entries)]))
    assert snapshot(host) == before
    refused(node, proc, "layer 1", message)


@pytest.mark.parametrize("fmt", FORMATS)
def test_devices_are_skipped_fifos_and_replacements_work(node, tmp_path, fmt):
    layers = [layer(d("dev"), entry("dev/mem2", tarfile.CHRTYPE, devmajor=1, devminor=1),
                    entry("dev/sda9", tarfile.BLKTYPE, devmajor=8, devminor=0),
                    entry("dev/fifo", tarfile.FIFOTYPE, mode=0o620),
                    f("was-file"), d("was-dir"), f("was-dir/x"), f("dup", b"one\n"),
                    f("dup", b"two\n"), f("target", b"t\n"), hard("hl", "target")),
              layer(d("was-file"), f("was-dir", b"now a file\n"), sym("dup", "target"))]
    cfg = config(layers)
    proc = imp(node, f"dev-{fmt}", archive(fmt, str(tmp_path / "a.tar"), layers))
    assert proc.returncode == 0, proc.stderr
    root = rootfs(node, cfg)
    assert not os.path.lexists(os.path.join(root, "dev", "mem2"))
    assert not os.path.lexists(os.path.join(root, "dev", "sda9"))
    st = os.lstat(os.path.join(root, "dev", "fifo"))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
    assert os.path.isdir(os.path.join(root, "was-file"))
    assert open(os.path.join(root, "was-dir"), "rb").read() == b"now a file\n"
    assert os.readlink(os.path.join(root, "dup")) == "target"
    assert os.stat(os.path.join(root, "hl")).st_ino == os.stat(os.path.join(root, "target")).st_ino
    assert "skipped device node dev/mem2" in node.daemon.log()
    node.ctl("image", "rm", f"dev-{fmt}")


# -- digests -----------------------------------------------------------------------------

@pytest.mark.parametrize("missing", [False, True])
def test_config_digest_is_never_a_path(node, host, clean, tmp_path, missing):
    target = os.path.join(host, "newdir") if missing else os.path.join(host, "keep")
    before = snapshot(host)
    lay = layer(f("x"))
    cfg = config([lay])
    bad = f"sha256:{target}"
    path = archive("oci", str(tmp_path / "a.tar"), [lay], config_digest=bad,
                   extra=[(f"blobs/sha256/{target.lstrip('/')}", cfg)])
    proc = imp(node, "digestpath", path)
    node.ctl("image", "rm", "digestpath", check=False)
    assert snapshot(host) == before
    refused(node, proc, "is not 'sha256:' and 64 lowercase hex digits")
    assert os.path.isdir(os.path.join(host, "keep")) and not os.path.exists(
        os.path.join(host, "newdir"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_layer_digests_are_refused(node, clean, tmp_path, fmt):
    real, other = layer(f("a", b"real\n")), layer(f("a", b"other\n"))
    if fmt == "oci":  # blob stored under the digest of different bytes
        path = archive("oci", str(tmp_path / "a.tar"), [real], blobs=[other],
                       layer_digests=[f"sha256:{sha(real)}"])
        message = "blob digest is sha256:" + sha(other)
    else:  # the config's diff_id names other bytes
        path = archive("docker", str(tmp_path / "a.tar"), [real], blobs=[other])
        message = "uncompressed digest is sha256:" + sha(other)
    refused(node, imp(node, f"wrongdigest-{fmt}", path), "layer 1", message)


def test_wrong_layer_size_is_refused(node, clean, tmp_path):
    lay = layer(f("a"))
    manifest = json.dumps({
        "config": {"digest": f"sha256:{sha(config([lay]))}"},
        "layers": [{"digest": f"sha256:{sha(lay)}", "size": len(lay) + 1}]}).encode()
    path = archive("oci", str(tmp_path / "a.tar"), [lay], manifest=manifest)
    refused(node, imp(node, "wrongsize", path), "layer 1", f"its descriptor says {len(lay) + 1}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_forged_archive_cannot_poison_an_image_id(node, tmp_path, fmt):
    """A real image's config with an evil layer in place of its real one: refused, and the
    real image imported afterwards has its own content."""
    real = layer(f("etc/motd", b"real\n"))
    evil = layer(f("etc/motd", b"evil\n"))
    cfg = config([real])
    kw = {"layer_digests": [f"sha256:{sha(real)}"]} if fmt == "oci" else {}
    forged = archive(fmt, str(tmp_path / "forged.tar"), [real], blobs=[evil], cfg=cfg, **kw)
    refused(node, imp(node, f"poison-{fmt}", forged), "layer 1", "digest is sha256:" + sha(evil))
    assert sha(cfg) not in store(node)
    good = archive(fmt, str(tmp_path / "good.tar"), [real], cfg=cfg)
    assert imp(node, f"poison-{fmt}", good).returncode == 0
    assert open(os.path.join(rootfs(node, cfg), "etc", "motd"), "rb").read() == b"real\n"
    node.ctl("image", "rm", f"poison-{fmt}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_gzip_layers_are_checked_compressed_and_uncompressed(node, tmp_path, fmt):
    lay = layer(d("etc"), f("etc/hello", b"hi\n"))
    cfg = config([lay])
    proc = imp(node, f"gz-{fmt}", archive(fmt, str(tmp_path / "a.tar"), [lay], blobs=[gz(lay)]))
    assert proc.returncode == 0, proc.stderr
    assert open(os.path.join(rootfs(node, cfg), "etc", "hello"), "rb").read() == b"hi\n"
    node.ctl("image", "rm", f"gz-{fmt}")


# -- malformed archives -----------------------------------------------------------------

def _index(manifests) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": manifests}).encode()


MALFORMED = [
    ("oci", {"index": b"{not json"}, "index.json: not JSON"),
    ("oci", {"index": b"[]"}, "index.json: expected an object, got a list"),
    ("oci", {"index": b'{"manifests": "x"}'}, "'manifests': expected a list, got a string"),
    ("oci", {"index": b'{"manifests": []}'}, "'manifests' is empty"),
    ("oci", {"index": _index([{"digest": 5}])}, "'digest': expected a string, got a number"),
    ("oci", {"index": _index([{}])}, "'digest' is missing"),
    ("oci", {"index": _index([{"digest": "sha256:" + "0" * 64}])},
     "blobs/sha256/" + "0" * 64 + " is missing from the archive"),
    ("oci", {"index": _index([{"digest": "sha256:" + "A" * 64}])}, "64 lowercase hex"),
    ("oci", {"manifest": b'{"config": {}}'}, "config: 'digest' is missing"),
    ("oci", {"manifest": b'{"layers": [], "config": []}'}, "expected an object, got a list"),
    ("oci", {"manifest": b"\xff\xfe"}, "not JSON"),
    ("oci", {"cfg": b'{"rootfs": {"diff_ids": "x"}}'}, "'diff_ids': expected a list, got a string"),
    ("docker", {"manifest": b"{}"}, "manifest.json: expected a list, got an object"),
    ("docker", {"manifest": b"[]"}, "manifest.json: expected a non-empty list"),
    ("docker", {"manifest": b"[1]"}, "manifest.json[0]: expected an object, got a number"),
    ("docker", {"manifest": b'[{"Config": 3}]'}, "'Config': expected a string, got a number"),
    ("docker", {"manifest": b'[{"Config": "nosuch.json", "Layers": []}]'},
     "nosuch.json is missing from the archive"),
    ("docker", {"manifest": b'[{"Config": "x.json", "Layers": [7]}]'},
     "'Layers'[0]: expected a string, got a number"),
    ("docker", {"cfg": b'{"config": {"Cmd": "sh"}, "rootfs": {"diff_ids": []}}'},
     "config.Cmd: expected a list, got a string"),
    ("docker", {"cfg": b'{"config": {"Env": [1]}, "rootfs": {"diff_ids": []}}'},
     "expected a string, got a number"),
    ("docker", {"cfg": b'{"rootfs": {"diff_ids": []}}'},
     "manifest.json lists 1 layers, its config"),
    ("docker", {"cfg": b"[" * 100000}, "not JSON"),
]


@pytest.mark.parametrize("fmt,override,message", MALFORMED,
                         ids=[f"{m[0]}-{i}" for i, m in enumerate(MALFORMED)])
def test_malformed_documents_are_one_clear_error(node, clean, tmp_path, fmt, override, message):
    lay = layer(f("x"))
    kw = dict(override)
    if fmt == "oci" and "cfg" in kw:  # a config that is not what the manifest's digest says
        kw["config_digest"] = f"sha256:{sha(kw['cfg'])}"
    refused(node, imp(node, "malformed", archive(fmt, str(tmp_path / "a.tar"), [lay], **kw)),
            message)


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_layers_and_archives_are_one_clear_error(node, clean, tmp_path, fmt):
    lay = layer(f("x", b"y" * 100000))
    cases = [
        ([gz(lay)[:-500]], "corrupt layer"),                 # truncated gzip
        ([b"this is not a tar" * 100], "corrupt layer"),     # not a tar
        ([lay[:2000]], "corrupt layer"),                     # truncated tar
    ]
    for i, (blobs, message) in enumerate(cases):
        path = archive(fmt, str(tmp_path / f"{i}.tar"), [lay], blobs=blobs)
        refused(node, imp(node, "corrupt", path), "layer 1", message)
    notar = tmp_path / "notar.tar"
    notar.write_bytes(b"\x00garbage" * 1000)
    refused(node, imp(node, "corrupt", str(notar)), "not a tar archive")
    empty = write_tar(str(tmp_path / "empty.tar"), [])
    refused(node, imp(node, "corrupt", empty), "not an OCI or docker archive")
    fifo = tmp_path / "fifo.tar"
    os.mkfifo(fifo)
    refused(node, imp(node, "corrupt", str(fifo)), "not a regular file")
    refused(node, imp(node, "corrupt", str(tmp_path / "nosuch.tar")), "No such file")


def test_oversized_json_is_refused_by_the_daemon(node, clean, tmp_path):
    big = json.dumps({"pad": "x" * (5 << 20), "rootfs": {"diff_ids": []}}).encode()
    path = archive("docker", str(tmp_path / "a.tar"), [], cfg=big)
    refused(node, imp(node, "big", path), "over the limit of 4194304 (max_json_bytes)")


def test_import_runs_off_the_event_loop(node, clean, tmp_path):
    """While an import works (its temporary directory exists: a layer that decompresses to
    256 MiB of zeros after its tar), the daemon answers other calls."""
    import subprocess
    import grpc
    from podnetd.api.podnet.v1 import pods_pb2, pods_pb2_grpc
    from testlib import PY, REPO, wait_for
    small = layer(f("x"))
    zeros = gzip.compress(b"\0" * (64 << 20), compresslevel=9, mtime=0)
    path = archive("oci", str(tmp_path / "slow.tar"), [small], blobs=[gz(small) + zeros * 4])
    proc = subprocess.Popen([PY, "-m", "podnetd.ctl.main", "image", "import", "--socket",
                             node.socket, "slow", path], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def importing():
            return [e for e in os.listdir(images_dir(node)) if e.startswith(".import-")]
        wait_for(importing, timeout=60, what="the import to start unpacking")
        with grpc.insecure_channel(f"unix:{node.socket}") as channel:
            pods_pb2_grpc.PodServiceStub(channel).ListImages(pods_pb2.ListImagesRequest(), timeout=30)
        assert importing(), "the import was over before the daemon answered"
    finally:
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "uncompressed digest is" in err, err

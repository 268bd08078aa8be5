"""The image store reads what `podman save` writes (docker-archive and oci-archive)."""
import os
import shutil
import subprocess
import tarfile
import tempfile

import pytest

from testlib import unique
from runtime_lib import busybox_archive
from podnetd.runtime.images import ImageError, ImageStore


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

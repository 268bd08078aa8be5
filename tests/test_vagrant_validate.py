"""The Vagrant lab's Vagrantfile is valid for vagrant (no box, no VM needed: `vagrant validate`),
and the lab's scripts parse. vagrant and vagrant-libvirt come from the Makefile's
TEST_APT_PACKAGES (`make test` installs them), so it is never skipped. The lab itself (VMs
under TCG, ~12 min) is `make lab-vagrant`, opt-in."""
import os
import py_compile
import subprocess

import pytest

from testlib import REPO

VAGRANT_DIR = REPO / "vagrant"


def vagrant(tmp_path, *args, **env):
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotvagrant"),
        "VAGRANT_CWD": str(VAGRANT_DIR),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
        **env,
    }
    return subprocess.run(["vagrant", *args], env=full_env, capture_output=True, text=True,
                          timeout=120)


def test_vagrantfile_validates(tmp_path):
    proc = vagrant(tmp_path, "validate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_vagrantfile_settings_from_environment(tmp_path):
    proc = vagrant(tmp_path, "validate", PODNET_NODES="5", PODNET_BOX="debian/bookworm64",
                   PODNET_LIBVIRT_DRIVER="kvm", PODNET_MEMORY="2048")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Five machines are defined: node1..node5 (the status of a never-created machine needs no box).
    status = vagrant(tmp_path, "status", "--machine-readable", PODNET_NODES="5")
    names = {line.split(",")[1] for line in status.stdout.splitlines() if ",state," in line}
    assert names == {f"node{i}" for i in range(1, 6)}, status.stdout + status.stderr


def test_vagrantfile_refuses_a_bad_node_count(tmp_path):
    proc = vagrant(tmp_path, "validate", PODNET_NODES="0")
    assert proc.returncode != 0
    assert "PODNET_NODES must be between 1 and 20" in proc.stdout + proc.stderr


@pytest.mark.parametrize("script", ["lab", "build-box", "provision.sh"])
def test_lab_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(VAGRANT_DIR / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", ["labpod.py", "suite.py"])
def test_lab_python_compiles(script, tmp_path):
    py_compile.compile(str(VAGRANT_DIR / script), cfile=str(tmp_path / "out.pyc"), doraise=True)

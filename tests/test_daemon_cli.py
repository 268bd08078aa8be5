"""podnetd's flags, config file, socket, health and reflection; the committed stubs; packaging."""
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import zipfile

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from testlib import PY, REPO, Daemon, assert_one_clear_line, in_ns

sys.path.insert(0, str(REPO / "proto"))


def run_podnetd(*args, timeout=20):
    return subprocess.run([PY, "-m", "podnetd.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("args, needle", [
    (["--pod-cidr", "10.1.0.0/33"], "--pod-cidr"),
    (["--pod-cidr", "10.1.0.1/24"], "host bits set"),
    (["--pod-cidr", "10.1.0.0/24", "--mtu", "99"], "--mtu"),
    (["--pod-cidr", "10.1.0.0/24", "--bridge", "a-name-much-too-long"], "--bridge"),
    (["--pod-cidr", "10.1.0.0/24", "--socket", "relative.sock"], "absolute"),
    (["--node-name", "x"], "--pod-cidr is required"),
    (["--pod-cidr", "10.1.0.0/24", "--no-such-flag"], "unrecognized"),
    (["--pod-cidr", "10.1.0.0/24", "--mtu", "abc"], "--mtu"),
])
def test_bad_flags_are_one_clear_line_exit_2(args, needle):
    proc = run_podnetd(*args)
    assert proc.returncode == 2
    assert_one_clear_line(proc.stderr, needle, prefix="podnetd: error:")


@pytest.mark.parametrize("text, needle", [
    ("pod-cidr: [1, 2", "cannot parse"),
    ("pod-cidr: 10.1.0.0/24\nbogus-key: 1\n", "unknown key 'bogus-key'"),
    ("pod-cidr: 10.1.0.0/24\nmtu: lots\n", "mtu"),
    ("- a list\n", "mapping"),
])
def test_bad_config_file(tmp_path, text, needle):
    path = tmp_path / "podnetd.yaml"
    path.write_text(text)
    proc = run_podnetd("--config", str(path))
    assert proc.returncode == 2, proc.stderr
    assert_one_clear_line(proc.stderr, needle, prefix="podnetd: error:")


def test_config_file_keys_mirror_flags_and_flags_win(netns, tmp_path):
    node = netns.add("cf")
    cfg = tmp_path / "podnetd.yaml"
    cfg.write_text("pod_cidr: 10.79.0.0/24\nbridge: pncfg0\nmtu: 1400\nlog-level: debug\n")
    d = Daemon(node, "10.78.0.0/24", extra=["--config", str(cfg)])  # --pod-cidr on the command line
    try:
        d.start()
        (link,) = json.loads(in_ns(node, "ip", "-j", "addr", "show", "pncfg0").stdout)
        assert link["mtu"] == 1400
        assert [(a["local"], a["prefixlen"]) for a in link["addr_info"]] == [("10.78.0.1", 24)]
    finally:
        d.cleanup()


def test_socket_is_root_only_and_serves_health_and_reflection(daemon):
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o600
    with grpc.insecure_channel(f"unix://{daemon.socket}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "podnet.v1.NodeService", "podnet.v1.EventService"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=5)
        names = {s.name for a in answers for s in a.list_services_response.service}
    assert {"podnet.v1.NodeService", "podnet.v1.EventService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    # renamed to buf's STANDARD style (README: "API names"); the old names are gone
    assert not names & {"podnet.v1.Node", "podnet.v1.Cluster", "podnet.v1.Pods"}
    # the node-to-node protocol is not served on the node-local socket
    assert not any(n.startswith("podnet.peer.") for n in names)
    assert "podnet.v1.Cni" not in names  # the plugin has its own relay socket (tests/test_cni_relay.py)


def test_second_daemon_on_same_state_dir_is_refused(daemon):
    proc = subprocess.run(daemon.argv(), capture_output=True, text=True, timeout=20, cwd=REPO)
    assert proc.returncode != 0
    assert "another podnetd is using state dir" in proc.stderr


def test_committed_stubs_match_proto(tmp_path):
    import generate
    fresh = generate.generate(tmp_path)
    committed = REPO / "podnetd" / "api"
    assert fresh, "no stubs generated"
    for path in fresh:
        rel = path.relative_to(tmp_path)
        mine = committed / rel
        assert mine.exists(), f"{rel} is not committed: run `make proto`"
        assert mine.read_text() == path.read_text(), f"{rel} drifted from proto/: run `make proto`"


def test_every_package_is_in_the_wheel(tmp_path):
    """Packages are discovered (setup.py), not listed: a wheel built from this tree holds every
    directory with an __init__.py under podnetd/, and the plugin's package podnet_cni."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis"))
    proc = subprocess.run([PY, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [wheel] = (tmp_path / "dist").glob("podnet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packed = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "podnetd").rglob("__init__.py")
             if not {".venv", "build", "__pycache__"} & set(p.relative_to(REPO).parts)}
    assert {"podnetd", "podnetd.cluster", "podnetd.runtime"} <= found  # the walk itself works
    assert found <= packed, f"packages missing from the wheel: {sorted(found - packed)}"
    assert {"podnet_cni/__init__.py", "podnet_cni/plugin.py"} <= set(names)


def test_installed_plugin_layout_runs_with_system_python(tmp_path):
    from podnetd.install import install_plugin
    launcher = install_plugin(str(tmp_path))
    proc = subprocess.run([launcher], env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True)
    assert proc.returncode == 0 and '"supportedVersions"' in proc.stdout
    assert list((tmp_path / ".podnet" / "__pycache__").glob("podnet_plugin.*.pyc"))


@pytest.mark.root
def test_make_install_lays_out_plugin_and_commands(tmp_path):
    cni_dir, bin_dir, conf_dir = tmp_path / "cni", tmp_path / "bin", tmp_path / "net.d"
    proc = subprocess.run(["make", "-s", "install", f"CNI_BIN_DIR={cni_dir}", f"BIN_DIR={bin_dir}",
                           f"CNI_CONF_DIR={conf_dir}", f"VENV={pathlib.Path(PY).parent.parent}"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    conflist = json.loads((conf_dir / "10-podnet.conflist").read_text())  # tests/test_install.py
    assert conflist["plugins"][0] == {"type": "podnet", "socket": "/run/podnet/cni.sock"}
    version = subprocess.run([cni_dir / "podnet"], env={"CNI_COMMAND": "VERSION"},
                             capture_output=True, text=True)
    assert version.returncode == 0 and "1.1.0" in version.stdout
    assert (cni_dir / "podnet").read_bytes()[:4] == b"\x7fELF"   # the native build
    for cmd in ("podnetd", "podnetctl"):
        helped = subprocess.run([bin_dir / cmd, "--help"], capture_output=True, text=True)
        assert helped.returncode == 0 and "usage" in helped.stdout.lower()

"""podnetctl lab as a person uses it: up, status, pods, matrix, down; down after the CLI itself
was killed mid-`up`; nothing lands in the host's namespace; bad input is one clear line."""
import json
import os
import signal
import subprocess
import time

import pytest

from podnetd.lab import probe, procs, state
from testlib import REPO, assert_one_clear_line, sh, unique

CTL = [str(REPO / ".venv" / "bin" / "podnetctl")]


def ctl(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CTL, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def lab_traces(name: str) -> dict:
    """Everything a lab could leave: namespaces with its prefix, its state dir."""
    spaces = sh("ip", "netns", "list").stdout.split()
    return {"netns": [s for s in spaces if s.startswith(f"{name}-")],
            "dir": os.path.exists(state.lab_dir(name))}


def host_underlay_traces() -> list[str]:
    """Addresses or routes of the lab's underlay in the host namespace: there must be none."""
    addrs = sh("ip", "-4", "-o", "addr").stdout
    routes = sh("ip", "-4", "route").stdout
    return [line for line in (addrs + routes).splitlines() if "10.250." in line]


@pytest.fixture
def name():
    n = unique("K")
    yield n
    if state.exists(n):
        ctl("lab", "down", "--name", n, check=False)


def test_up_status_pods_matrix_down(name):
    up = ctl("lab", "up", "--name", name, "--nodes", "2", "--topology", "l2")
    assert "n1" in up.stdout and "n2=host-gw" in up.stdout, up.stdout
    assert host_underlay_traces() == []
    data = json.loads(ctl("lab", "status", "--name", name, "-o", "json").stdout)
    assert [n["node"] for n in data["nodes"]] == ["n1", "n2"]
    assert data["nodes"][0]["peers"] == {"n2": "host-gw"}
    assert {(r["on"], r["kind"], r["node"], r["state"]) for r in data["routes"]} == {
        ("n1", "route", "n2", "present"), ("n2", "route", "n1", "present")}
    for node in ("n1", "n2"):
        out = ctl("lab", "pod", "add", "--name", name, "--node", node).stdout
        assert out.startswith(f"{node}/p1 10.244.")
    matrix = ctl("lab", "matrix", "--name", name, "--tcp")
    assert matrix.stdout.count("ok") == 2 and "FAIL" not in matrix.stdout
    sock = data["nodes"] and state.load(name).nodes["n1"]["socket"]
    nodes = ctl("nodes", "--socket", sock, "-o", "yaml").stdout
    assert "self_name: n1" in nodes and "mode: host-gw" in nodes
    table = ctl("routes", "--socket", sock).stdout.splitlines()
    assert table[0].split() == ["KIND", "NODE", "MODE", "DESTINATION", "VIA", "DEV", "STATE"]
    assert table[1].split() == ["route", "n2", "host-gw", data["nodes"][1]["pod_cidr"],
                                "10.250.0.12", "eth0", "present"]
    records = list(state.load(name).processes.values())
    assert len(records) == 2 and all(procs.alive(r) for r in records)
    ctl("lab", "down", "--name", name)
    assert lab_traces(name) == {"netns": [], "dir": False}
    assert not any(procs.alive(r) for r in records)  # gone (a zombie awaiting init counts as gone)


def test_down_after_the_cli_was_killed_mid_up(name):
    cli = subprocess.Popen([*CTL, "lab", "up", "--name", name, "--nodes", "2", "--store", "etcd"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def daemons_recorded():
            try:
                return "podnetd/n2" in state.load(name).processes
            except state.StateError:
                return False
        probe.until(daemons_recorded, 30, "the lab's daemons recorded")
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.wait()
    records = list(state.load(name).processes.values())
    assert any(procs.alive(r) for r in records)  # orphans of the crashed CLI: etcd, podnetd
    ctl("lab", "down", "--name", name)
    assert lab_traces(name) == {"netns": [], "dir": False}
    assert not any(procs.alive(r) for r in records)


@pytest.mark.parametrize("args,needle", [
    (["lab", "up", "--nodes", "0"], "--nodes 0"),
    (["lab", "up", "--name", "a/b"], "lab name"),
    (["lab", "status", "--name", "nosuchlab"], "no lab named"),
    (["lab", "down", "--name", "nosuchlab"], "no lab named"),
    (["lab", "pod", "add", "--name", "nosuchlab", "--node", "n1"], "no lab named"),
])
def test_bad_input_is_one_clear_line(args, needle):
    proc = ctl(*args, check=False)
    assert proc.returncode != 0
    assert_one_clear_line(proc.stderr, needle)


def test_a_second_lab_of_the_same_name_is_refused(name):
    ctl("lab", "up", "--name", name, "--nodes", "1")
    again = ctl("lab", "up", "--name", name, "--nodes", "1", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    assert len(lab_traces(name)["netns"]) == 2  # the first lab is untouched: underlay + n1
    ctl("lab", "down", "--name", name)
    assert lab_traces(name) == {"netns": [], "dir": False}

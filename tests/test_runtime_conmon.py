"""Each container attempt runs under conmon (as in CRI-O and podman): one small resident
supervisor per container, the container's parent (subreaper), and no resident runc or
Python shim. Real runc, real conmon."""
import json

import pytest

from testlib import sh
from runtime_lib import container, pod, runtime_node


@pytest.fixture(scope="module")
def node():
    with runtime_node("cm", "10.78.59.0/24") as n:
        yield n


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _naming(needle: str) -> list[str]:
    out = []
    for pid in sh("ps", "-e", "-o", "pid=").stdout.split():
        try:
            cmd = _cmdline(int(pid))
        except OSError:
            continue
        if needle in cmd:
            out.append(cmd)
    return out


def test_each_container_runs_under_its_conmon_and_no_runc_stays(node):
    doc = pod("mon", [container("a", "exec sleep 3600"), container("b", "exec sleep 3600")])
    with node.running(doc) as p:
        uid12 = p["metadata"]["uid"][:12]
        node.wait("mon", lambda p: all("running" in c["state"]
                                       for c in p["status"]["containerStatuses"]))
        for name in ("a", "b"):
            cid = f"pn-{uid12}-{name}"
            supervisors = _naming(cid)
            assert [cmd.split()[0] for cmd in supervisors] == ["conmon"], supervisors
            init = json.loads(sh("runc", "state", cid).stdout)["pid"]
            assert _cmdline(_ppid(init)).startswith("conmon") and cid in _cmdline(_ppid(init))
        assert not [c for c in _naming(f"pn-{uid12}") if "shim.py" in c or
                    c.startswith("runc")]

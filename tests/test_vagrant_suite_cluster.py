"""The Vagrant lab's cluster checks (vagrant/suite.py cluster_part), run against the netns lab
instead of VMs: the same podnetctl commands, as the lab's client config's admin and alice, from
node 1's namespace. So the suite's commands, its reading of their output (JSON, kubectl's
refusal wording, can-i, the audit log) and its verdict are exercised on every `make test`,
while the VMs themselves stay opt-in (`make lab-vagrant`).

The suite talks to a node by ssh; here a node is a network namespace and `ssh` runs the same
command line there with the lab's client config."""
import os
import subprocess
import sys

import pytest

from podnetd.lab import cluster_api
from podnetd.lab.lab import Lab
from runtime_lib import busybox_archive
from testlib import REPO, unique

sys.path.insert(0, str(REPO / "vagrant"))
import suite  # noqa: E402

VENV_BIN = os.path.dirname(sys.executable)


class NetnsLab(suite.Lab):
    """suite.Lab whose nodes are the netns lab's: ssh NODE CMD = CMD in NODE's namespace."""

    def __init__(self, lab: Lab):
        super().__init__("", lab.node_names(), "runtime")
        self.lab = lab
        self.env = {**os.environ, "PODNET_CONFIG": cluster_api.config_path(lab),
                    "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    def ssh(self, node: str, command: str, check: bool = True, timeout: float = 300):
        if command.startswith("sudo "):     # root already
            command = command[len("sudo "):]
        proc = subprocess.run(["ip", "netns", "exec", self.lab.netns(node), "sh", "-c", command],
                              capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{node}: {command}: exit {proc.returncode}: "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc


@pytest.fixture(scope="module")
def lab():
    lb = Lab.up(3, "l2", "etcd", name=unique("vs"), node_lease_renew=1.0, wait=30)
    try:
        cluster_api.import_image(lb, "busybox:1", busybox_archive())
        yield lb
    finally:
        lb.down()


def label_as_provisioning_does(vl: NetnsLab) -> None:
    """The labels the Vagrantfile gives each VM's podnetd (--node-labels): its name, and
    disk=ssd on the second node."""
    for i, node in enumerate(vl.nodes, 1):
        extra = " disk=ssd" if i == 2 else ""
        suite.podnetctl(vl, f"label node {node} lab.podnet.io/vm={node}{extra} --overwrite")


def test_the_suites_cluster_part_passes_on_a_real_cluster(lab):
    vl = NetnsLab(lab)
    label_as_provisioning_does(vl)
    failures = suite.cluster_part(vl, 180, manifest=str(REPO / "examples/cluster/web.yaml"),
                                  plain_context=f"{lab.st.name}-alice",
                                  audit_log=lab.audit_log(vl.nodes[0]))
    assert failures == []
    # it cleans up after itself (a second `vagrant/lab test` starts from nothing)
    def gone():
        names = {p["metadata"]["name"] for p in suite.get_json(vl, "pods")}
        return not names & {*suite.WEBS, suite.DB}

    assert suite.until("the suite's pods deleted", 60, gone, interval=1)


def test_the_suites_cluster_part_fails_without_an_ssd_node(lab):
    """No node labelled disk=ssd (provisioning went wrong): the suite says so, it does not pass."""
    vl = NetnsLab(lab)
    for node in vl.nodes:
        vl.ssh(vl.nodes[0], f"podnetctl label node {node} disk-", check=False)
    with pytest.raises(suite.ClusterCheckFailed, match="one node labelled disk=ssd wanted, got none"):
        suite.cluster_part(vl, 30, manifest=str(REPO / "examples/cluster/web.yaml"),
                           plain_context=f"{lab.st.name}-alice",
                           audit_log=lab.audit_log(vl.nodes[0]))

"""Logs and exec of cluster pods (podnetd/apiserver/podio.py) with two real podnetds sharing a
real etcd (in the hub netns of a routed underlay), real runc pods, real certificates (openssl):
node B runs the pods; node A answers for them by forwarding to B over mutual TLS with its node
certificate (CN system:node:A, O system:nodes). Calls go through the unix socket (root = cluster
admin) and through the TLS listeners with client certificates (tests/podio_client.py, run inside
node A's netns)."""
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from podnetd.lab import pki
from runtime_lib import busybox_archive, cni_dirs, force_cleanup
from test_cluster_etcd import Etcd
from test_cluster_lib import ClusterDaemon, Underlay
from testlib import PY, REPO, Netns, in_ns, sh, wait_for

pytestmark = pytest.mark.root

CLUSTER = "10.97.0.0/16"
API_PORT = 6443
CLIENT = os.path.join(REPO, "tests", "podio_client.py")


def node_cert(directory: str, ca: tuple[str, str], node: str, ip: str,
              groups: tuple[str, ...] = ("system:nodes",)) -> tuple[str, str]:
    """A node's certificate as the lab issues them: CN system:node:NAME, O system:nodes, its
    InternalIP as IP SAN, good for serving and as a client."""
    key, csr, crt, ext = (os.path.join(directory, f"{node}-{len(groups)}.{x}")
                          for x in ("key", "csr", "crt", "ext"))
    with open(ext, "w") as f:
        f.write(f"subjectAltName=IP:{ip}\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n")
    subject = "".join(f"/O={g}" for g in groups) + f"/CN=system:node:{node}"
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
       "-keyout", key, "-out", csr, "-subj", subject)
    sh("openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
       "-out", crt, "-days", "2", "-extfile", ext)
    return crt, key


class Node:
    """A podnetd with the pod runtime, the etcd store and the cluster API on its underlay IP."""

    def __init__(self, ns: str, ip: str, etcd: Etcd, ca: tuple[str, str], pki_dir: str):
        self.ns, self.ip = ns, ip
        self.workdir = tempfile.mkdtemp(prefix=f"{ns}-podio-")
        self.cert = node_cert(pki_dir, ca, ns, ip)
        conf_dir, bin_dir = cni_dirs(self.workdir, os.path.join(self.workdir, "cni.sock"))
        self.daemon = ClusterDaemon(ns, None, node_ip=ip, cluster_cidr=CLUSTER,
                                    workdir=self.workdir, extra=[
            "--store", "etcd", "--etcd-endpoints", etcd.url, *etcd.client_flags,
            "--cni-conf-dir", conf_dir, "--cni-bin-dir", bin_dir, "--oci-runtime", "runc",
            "--api-listen", f"{ip}:{API_PORT}", "--tls-cert", self.cert[0],
            "--tls-key", self.cert[1], "--tls-ca", ca[0], "--client-ca", ca[0]])

    @property
    def socket(self) -> str:
        return self.daemon.socket

    def ctl(self, *args: str) -> str:
        proc = subprocess.run([PY, "-m", "podnetd.ctl.main", *args], capture_output=True,
                              text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 0, f"podnetctl {args}: {proc.stdout}{proc.stderr}"
        return proc.stdout


class Lab:
    def __init__(self, a: Node, b: Node, ca: str, certs: dict, hub: str):
        self.a, self.b, self.ca, self.certs, self.hub = a, b, ca, certs, hub

    def call(self, via, op: str, who: str | None = None, **req) -> dict:
        """A call at node `via`: through its unix socket (who None: root, cluster admin) or
        its TLS listener with `who`'s certificate (from node A's netns)."""
        req["op"] = op
        if who is None:
            req["target"] = f"unix://{via.socket}"
            argv = [PY, CLIENT]
        else:
            req["target"] = f"{via.ip}:{API_PORT}"
            req["tls"] = [self.ca, *self.certs[who]]
            argv = ["nsenter", f"--net=/run/netns/{self.a.ns}", PY, CLIENT]
        proc = subprocess.run(argv, input=json.dumps(req), capture_output=True, text=True,
                              cwd=REPO, timeout=90)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def ok(self, via, op: str, who: str | None = None, **req) -> dict:
        out = self.call(via, op, who, **req)
        assert out["code"] == "OK", (out, self.a.daemon.log()[-2000:], self.b.daemon.log()[-2000:])
        return out


def container(name: str, script: str, image: str = "busybox") -> dict:
    return {"name": name, "image": image, "imagePullPolicy": "Never",
            "command": ["sh", "-c", script]}


def pod(name: str, containers: list, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1, **spec, "containers": containers}}


WEB = pod("web", [
    container("c", "for i in 1 2 3 4 5; do echo line$i; done; exec sleep 3600"),
    container("f", "echo waiting; while [ ! -f /tmp/go ]; do sleep 0.1; done; echo after-go; "
                   "exec sleep 3600"),
    # 300 lines of 1000 bytes: more than four log pieces
    container("big", "head -c 300000 /dev/zero | tr '\\0' x | fold -w 1000; exec sleep 3600")])


@pytest.fixture(scope="module")
def lab():
    spaces = Netns()
    etcd = None
    nodes: list[Node] = []
    pki_dir = tempfile.mkdtemp(prefix="pt-podio-pki-")
    try:
        underlay = Underlay(spaces, routed=True)
        etcd = Etcd(underlay.hub)
        etcd.start()
        ca = pki.make_ca(pki_dir, "podio")
        for _ in range(2):
            ns, ip = underlay.add_node()
            nodes.append(Node(ns, ip, etcd, ca, pki_dir))
        for n in nodes:
            n.daemon.start(timeout=30)
        a, b = nodes
        b.ctl("image", "import", "--socket", b.socket, "busybox", busybox_archive())
        certs = {
            "admin": pki.make_client_cert(pki_dir, *ca, "admin", ("system:masters",)),
            "alice": pki.make_client_cert(pki_dir, *ca, "alice"),
            "bob": pki.make_client_cert(pki_dir, *ca, "bob", ("dev",)),
            "node-a": a.cert, "node-b": b.cert,
            # a node's name without the group: just a user (as Kubernetes' NodeIdentifier)
            "fake-node": node_cert(pki_dir, ca, a.ns, a.ip, groups=()),
        }
        lab = Lab(a, b, ca[0], certs, underlay.hub)
        # bob may read logs in default, not exec
        lab.ok(a, "create", resource="roles", namespace="default", object={
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "log-reader", "namespace": "default"},
            "rules": [{"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]})
        lab.ok(a, "create", resource="rolebindings", namespace="default", object={
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "bob-logs", "namespace": "default"},
            "subjects": [{"kind": "User", "name": "bob",
                          "apiGroup": "rbac.authorization.k8s.io"}],
            "roleRef": {"kind": "Role", "name": "log-reader",
                        "apiGroup": "rbac.authorization.k8s.io"}})
        web = json.loads(json.dumps(WEB))
        web["spec"]["nodeName"] = b.ns
        lab.ok(a, "create", resource="pods", namespace="default", object=web)

        def running():
            obj = lab.ok(b, "get", resource="pods", namespace="default", name="web")["object"]
            states = [c.get("state", {}) for c in obj.get("status", {}).get(
                "containerStatuses", [])]
            return len(states) == 3 and all("running" in s for s in states)
        wait_for(running, 60, interval=0.3, what=f"pod web running on {b.ns}:\n"
                 f"{b.daemon.log()[-3000:]}")
        yield lab
    finally:
        for n in reversed(nodes):
            n.daemon.stop()
            force_cleanup(n.workdir)
            in_ns(n.ns, PY, "-m", "podnetd.main", "--cleanup", check=False, cwd=REPO)
            n.daemon.cleanup()
        if etcd:
            etcd.cleanup()
        spaces.cleanup()
        shutil.rmtree(pki_dir, ignore_errors=True)


def lines(n_from: int, n_to: int) -> str:
    return "".join(f"line{i}\n" for i in range(n_from, n_to + 1))


# ---- served by the pod's own node -------------------------------------------------------------

def test_logs_and_exec_on_the_pods_node_through_both_doors(lab):
    for who in (None, "admin"):
        assert lab.ok(lab.b, "logs", who, name="web", container="c")["data"] == lines(1, 5)
        assert lab.ok(lab.b, "logs", who, name="web", container="c", tail=2)["data"] == \
            lines(4, 5)
        assert lab.ok(lab.b, "logs", who, name="web", container="c", tail=0)["data"] == ""
        out = lab.ok(lab.b, "exec", who, name="web", container="c",
                     command=["sh", "-c", "cat; echo err >&2; exit 3"],
                     stdin=base64.b64encode(b"hello\n").decode())
        assert (out["stdout"], out["stderr"], out["exit_code"]) == ("hello\n", "err\n", 3)


# ---- asked at node A, forwarded to node B -----------------------------------------------------

def test_logs_and_exec_at_another_node_are_forwarded(lab):
    for who in (None, "admin"):
        assert lab.ok(lab.a, "logs", who, name="web", container="c")["data"] == lines(1, 5)
        assert lab.ok(lab.a, "logs", who, name="web", container="c", tail=3)["data"] == \
            lines(3, 5)
        out = lab.ok(lab.a, "exec", who, name="web", container="c",
                     command=["sh", "-c", "cat; hostname; exit 7"],
                     stdin=base64.b64encode(b"through A\n").decode())
        assert out["stdout"] == "through A\nweb\n" and out["exit_code"] == 7
    assert "forwarded by system:node:" in lab.b.daemon.log()


def test_follow_is_relayed_as_it_comes(lab):
    req = {"op": "logs", "name": "web", "container": "f", "follow": True, "until": "after-go",
           "target": f"{lab.a.ip}:{API_PORT}", "tls": [lab.ca, *lab.certs["admin"]],
           "timeout": 60}
    follower = subprocess.Popen(["nsenter", f"--net=/run/netns/{lab.a.ns}", PY, CLIENT],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                cwd=REPO)
    try:
        follower.stdin.write(json.dumps(req))
        follower.stdin.close()
        # the stream is open and has shown what came so far before the container goes on
        wait_for(lambda: "forwarded by" in lab.b.daemon.log()
                 and "logs of pod default/web container f" in lab.b.daemon.log(), 30,
                 what="the follow forwarded to B")
        time.sleep(0.5)
        assert follower.poll() is None, "the follower ended before the container wrote more"
        lab.ok(lab.a, "exec", name="web", container="f", command=["touch", "/tmp/go"])
        follower.wait(timeout=30)
        out = follower.stdout.read()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    got = json.loads(out)
    assert got["code"] == "OK" and got["data"] == "waiting\nafter-go\n", got


def test_bounds_log_pieces_exec_output_and_stdin(lab):
    big = lab.ok(lab.a, "logs", name="web", container="big")
    assert big["data"] == ("x" * 1000 + "\n") * 299 + "x" * 1000   # fold ends without one
    assert big["pieces"] >= 4 and big["biggest"] <= 64 * 1024 + 1001, big["biggest"]
    out = lab.ok(lab.a, "exec", name="web", container="c",
                 command=["head", "-c", "3000000", "/dev/zero"])
    assert out["stdout_len"] == 1 << 20 and "stdout cut at 1048576 bytes" in out["stderr"]
    refused = lab.call(lab.a, "exec", name="web", container="c", command=["cat"],
                       stdin=base64.b64encode(b"y" * ((1 << 20) + 1)).decode())
    assert refused["code"] == "RESOURCE_EXHAUSTED" and "1048576 byte limit" in refused["details"]


# ---- who may ask --------------------------------------------------------------------------------

def test_rbac_decides_per_subresource(lab):
    denied = lab.call(lab.a, "logs", "alice", name="web", container="c")
    assert denied["code"] == "PERMISSION_DENIED"
    assert denied["details"].startswith('pods "web" is forbidden: User "alice" cannot get '
                                        'resource "pods/log" in API group "" in the namespace '
                                        '"default"'), denied
    # bob may read logs (forwarded for him), not exec
    assert lab.ok(lab.a, "logs", "bob", name="web", container="c")["data"] == lines(1, 5)
    denied = lab.call(lab.a, "exec", "bob", name="web", container="c", command=["id"])
    assert denied["code"] == "PERMISSION_DENIED" and 'cannot create resource "pods/exec"' in \
        denied["details"], denied


def test_the_pods_node_takes_forwards_only_from_nodes_and_only_for_its_pods(lab):
    # a user calling B directly is authorized as any user: refused
    for who in ("alice", "fake-node"):
        denied = lab.call(lab.b, "exec", who, name="web", container="c", command=["id"])
        assert denied["code"] == "PERMISSION_DENIED", (who, denied)
    # a node in its own name: a forward, served for a pod bound to B
    out = lab.ok(lab.b, "exec", "node-a", name="web", container="c", command=["echo", "hi"])
    assert out["stdout"] == "hi\n"
    # ... but never forwarded again: node B's credential at node A for B's pod
    refused = lab.call(lab.a, "exec", "node-b", name="web", container="c", command=["id"])
    assert refused["code"] == "FAILED_PRECONDITION"
    assert "never forwarded again" in refused["details"], refused


# ---- pods that cannot be reached yet ------------------------------------------------------------

def test_missing_unbound_and_waiting_pods_in_kubectls_words(lab):
    missing = lab.call(lab.a, "logs", name="nope")
    assert (missing["code"], missing["details"]) == ("NOT_FOUND", 'pods "nope" not found')
    no_name = lab.call(lab.a, "logs", name="web")
    assert no_name["code"] == "INVALID_ARGUMENT" and no_name["details"] == \
        "a container name must be specified for pod web, choose one of: [c f big]"
    bad = lab.call(lab.a, "exec", name="web", container="zz", command=["id"])
    assert bad["details"] == "container zz is not valid for pod web"
    # no node fits: the pod stays unbound
    lab.ok(lab.a, "create", resource="pods", namespace="default", object=pod(
        "pending", [container("c", "sleep 1")], nodeSelector={"podio-test": "nowhere"}))
    unbound = lab.call(lab.a, "exec", name="pending", command=["id"])
    assert (unbound["code"], unbound["details"]) == (
        "FAILED_PRECONDITION", "pod pending does not have a host assigned")
    stuck = pod("stuck", [container("c", "sleep 1", image="no-such-image")])
    stuck["spec"]["nodeName"] = lab.b.ns
    lab.ok(lab.a, "create", resource="pods", namespace="default", object=stuck)

    # bound to B, which cannot start it (a short name is never pulled and B has no such
    # image): nothing runs, nothing logged, and the answer says why in the kubelet's words
    deadline = time.monotonic() + 30
    while True:
        out = lab.call(lab.a, "logs", name="stuck")
        if out["details"].endswith("ErrImageNeverPull") or time.monotonic() > deadline:
            break
        assert out["details"].endswith("ContainerCreating"), out   # before the runtime tried
        time.sleep(0.2)
    assert (out["code"], out["details"]) == (
        "FAILED_PRECONDITION",
        'container "c" in pod "stuck" is waiting to start: ErrImageNeverPull')


def test_mirror_pod_of_a_node_local_pod(lab):
    path = os.path.join(lab.b.workdir, "local.yaml")
    with open(path, "w") as f:
        json.dump(pod("local", [container("c", "echo from-local; exec sleep 3600")]), f)
    lab.b.ctl("pod", "run", "--socket", lab.b.socket, "-f", path)
    mirror = f"local-{lab.b.ns}"
    wait_for(lambda: lab.call(lab.a, "get", resource="pods", namespace="default",
                              name=mirror)["code"] == "OK", 30, interval=0.3,
             what="the mirror pod")
    assert lab.ok(lab.a, "logs", name=mirror)["data"] == "from-local\n"
    assert lab.ok(lab.a, "exec", name=mirror, command=["echo", "in-local"])["stdout"] == \
        "in-local\n"

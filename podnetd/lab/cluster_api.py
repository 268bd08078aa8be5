"""The lab's cluster API side: client certificates for an admin and a plain user, a client
config (kubeconfig-shaped) for them, a small gRPC client of podnet.api.v1 over TLS (the demo
and the tests use it), and images imported into every node's runtime.

The client config is kubectl's format, so podnetctl (or kubectl's habits) read it as is:
`server` is the first node's API, `servers` (podnetctl's extension) the other nodes', tried in
turn when one is down."""
import concurrent.futures
import contextlib
import json
import os

import grpc
import yaml

from ..api.podnet.api.v1 import api_pb2, api_pb2_grpc
from ..api.podnet.v1 import pods_pb2, pods_pb2_grpc
from . import pki, plan
from .forward import Forwarder

ADMIN = ("admin", ("system:masters",))   # as kubeadm's admin.conf: O=system:masters
USER = ("alice", ())                     # a user no RBAC rule names yet
CONFIG = "config.yaml"


def users_dir(lab) -> str:
    return os.path.join(lab.st.dir, "users")


def ca_cert(lab) -> str:
    return os.path.join(lab.st.dir, "ca", "ca.crt")


def config_path(lab) -> str:
    return os.path.join(lab.st.dir, CONFIG)


def user_files(lab, user: str) -> tuple[str, str]:
    """(certificate, key) of a lab user made by make_users."""
    d = users_dir(lab)
    return os.path.join(d, f"{user}.crt"), os.path.join(d, f"{user}.key")


def make_users(lab) -> None:
    ca = os.path.join(lab.st.dir, "ca")
    for user, groups in (ADMIN, USER):
        pki.make_client_cert(users_dir(lab), os.path.join(ca, "ca.crt"),
                             os.path.join(ca, "ca.key"), user, groups)


def client_config(lab) -> dict:
    """The kubeconfig document: one cluster (every node's API), the admin and the plain user,
    a context for each (the admin's is current)."""
    name = lab.st.name
    servers = [f"https://{lab.api_server(n)}" for n in lab.node_names()]
    cluster = {"server": servers[0], "certificate-authority": ca_cert(lab)}
    if len(servers) > 1:
        cluster["servers"] = servers[1:]
    users = []
    for user, _ in (ADMIN, USER):
        cert, key = user_files(lab, user)
        users.append({"name": user, "user": {"client-certificate": cert, "client-key": key}})
    contexts = [{"name": name, "context": {"cluster": name, "user": ADMIN[0],
                                           "namespace": "default"}},
                {"name": f"{name}-{USER[0]}", "context": {"cluster": name, "user": USER[0],
                                                          "namespace": "default"}}]
    return {"apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": name, "cluster": cluster}], "users": users,
            "contexts": contexts, "current-context": name}


def write_config(lab) -> str:
    path = config_path(lab)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(client_config(lab), f, sort_keys=False, default_flow_style=False)
    os.replace(tmp, path)
    return path


def usage(lab) -> str:
    """How to reach the lab's cluster (printed by `lab up`, `lab status` and the demo). The
    API's addresses exist only in the lab's namespaces: run the client in one of them."""
    first = lab.node_names()[0]
    return (f"cluster API on every node (https://<node ip>:{plan.API_PORT}); as admin:\n"
            f"  export PODNET_CONFIG={config_path(lab)}; "
            f"podnetctl lab exec {first} --name {lab.st.name} -- podnetctl get nodes\n"
            f"  (--context {lab.st.name}-{USER[0]}: user {USER[0]}, who may do nothing until "
            f"bound)")


# -- a small client of podnet.api.v1 --------------------------------------------------------------


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class ApiClient:
    """podnet.api.v1 at one node's TLS listener, as a lab user (client certificate), with a
    bearer token, or with no credentials at all. gRPC errors pass through (grpc.RpcError:
    .code() and .details() are what a user sees). The connection runs through a Forwarder
    into the node's namespace; the server's certificate is checked for the node's name."""

    def __init__(self, lab, node: str, user: str | None = ADMIN[0], *, token: str | None = None,
                 timeout: float = 10):
        cert = key = None
        if user is not None:
            cert, key = (_read(p) for p in user_files(lab, user))
        creds = grpc.ssl_channel_credentials(root_certificates=_read(ca_cert(lab)),
                                             private_key=key, certificate_chain=cert)
        host, _, port = lab.api_server(node).rpartition(":")
        self.forwarder = Forwarder(lab.netns(node), host, int(port))
        self.channel = grpc.secure_channel(self.forwarder.address, creds, options=[
            ("grpc.ssl_target_name_override", node),
            # a node that was down is dialled again at once when it is asked again
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)])
        self.objects = api_pb2_grpc.ObjectServiceStub(self.channel)
        self.access = api_pb2_grpc.AccessServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()
        self.forwarder.close()

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _kw(self) -> dict:
        return {"timeout": self.timeout, "metadata": self.metadata}

    def create(self, resource: str, obj: dict, namespace: str = "") -> dict:
        resp = self.objects.CreateObject(api_pb2.CreateObjectRequest(
            resource=resource, namespace=namespace, object=json.dumps(obj).encode()), **self._kw())
        return json.loads(resp.object)

    def get(self, resource: str, name: str, namespace: str = "") -> dict:
        resp = self.objects.GetObject(api_pb2.GetObjectRequest(
            resource=resource, namespace=namespace, name=name), **self._kw())
        return json.loads(resp.object)

    def list(self, resource: str, namespace: str = "", label_selector: str = "",
             field_selector: str = "") -> list[dict]:
        resp = self.objects.ListObjects(api_pb2.ListObjectsRequest(
            resource=resource, namespace=namespace, label_selector=label_selector,
            field_selector=field_selector), **self._kw())
        return json.loads(resp.list).get("items") or []

    def delete(self, resource: str, name: str, namespace: str = "",
               grace: int | None = None) -> dict:
        req = api_pb2.DeleteObjectRequest(resource=resource, namespace=namespace, name=name)
        if grace is not None:
            req.grace_period.seconds = grace
        return json.loads(self.objects.DeleteObject(req, **self._kw()).object)

    def whoami(self):
        return self.access.WhoAmI(api_pb2.WhoAmIRequest(), **self._kw())


@contextlib.contextmanager
def client(lab, node: str | None = None, user: str | None = ADMIN[0], **kw):
    c = ApiClient(lab, node or lab.node_names()[0], user, **kw)
    try:
        yield c
    finally:
        c.close()


def wait_nodes_ready(lab, timeout: float = 30) -> None:
    """Until every lab node's Node object is Ready without a node.kubernetes.io/ taint (the
    node lifecycle's not-ready/unreachable), as the admin at the first node: a pod applied
    before would find fewer nodes and wait for the scheduler's retry. LabError otherwise."""
    import time
    from .lab import LabError
    want = set(lab.node_names())
    deadline = time.monotonic() + timeout
    seen: dict = {}
    with client(lab) as c:
        while True:
            try:
                seen = {n["metadata"]["name"]: n for n in c.list("nodes")}
            except grpc.RpcError:
                pass   # the API may still be opening its store
            if all(n in seen and _schedulable(seen[n]) for n in want):
                return
            if time.monotonic() > deadline:
                late = sorted(n for n in want if n not in seen or not _schedulable(seen[n]))
                raise LabError(f"nodes {', '.join(late)} not Ready in the cluster API after "
                               f"{timeout}s")
            time.sleep(0.1)


def _schedulable(node: dict) -> bool:
    ready = [c for c in node.get("status", {}).get("conditions") or [] if c["type"] == "Ready"]
    taints = [t for t in node.get("spec", {}).get("taints") or []
              if t.get("key", "").startswith("node.kubernetes.io/")]
    return bool(ready) and ready[0]["status"] == "True" and not taints


# -- node runtimes ---------------------------------------------------------------------------


def _pods_stub(lab, node: str):
    return grpc.insecure_channel(f"unix://{lab.socket(node)}")


def import_image(lab, name: str, archive: str, timeout: float = 600) -> dict[str, str]:
    """Import an image archive into every node's pod runtime (as `podnetctl image import` on
    each node), in parallel; {node: image id}. Raises LabError naming the nodes that failed."""
    from .lab import LabError
    archive = os.path.abspath(archive)
    if not os.path.isfile(archive):
        raise LabError(f"image archive {archive}: no such file")

    def one(node: str) -> str:
        with contextlib.closing(_pods_stub(lab, node)) as ch:
            resp = pods_pb2_grpc.PodServiceStub(ch).ImportImage(
                pods_pb2.ImportImageRequest(name=name, archive=archive), timeout=timeout)
            return resp.image.id

    nodes = lab.node_names()
    out, errors = {}, []
    with concurrent.futures.ThreadPoolExecutor(len(nodes) or 1) as pool:
        for node, fut in [(n, pool.submit(one, n)) for n in nodes]:
            try:
                out[node] = fut.result()
            except grpc.RpcError as e:
                errors.append(f"{node}: {e.details() or e.code().name}")
    if errors:
        raise LabError(f"import image {name} from {archive}: " + "; ".join(errors))
    return out


def runtime_pods(lab, node: str, timeout: float = 5) -> list:
    """The pods a node's runtime has (PodSummary: namespace, name, phase, ip)."""
    with contextlib.closing(_pods_stub(lab, node)) as ch:
        return list(pods_pb2_grpc.PodServiceStub(ch).ListPods(pods_pb2.ListPodsRequest(),
                                                              timeout=timeout).pods)


def pod_netns(pod: dict) -> str:
    """The named network namespace the node's runtime made for a cluster pod (its sandbox is
    named after the pod's uid)."""
    return f"podnet-{pod['metadata']['uid'][:12]}"

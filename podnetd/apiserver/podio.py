"""PodIOService: a cluster pod's logs (pods/log) and exec (pods/exec), served as kube-apiserver
and the kubelet serve them together: the node that answers authorizes the requester and looks the
pod up, then either serves it from its own pod runtime (the pod is bound to this node) or forwards
the call to the pod's node over mutual TLS (podio_dial.py) and relays the answer.

Who may ask, decided on the receiving side from the authenticated caller only:

- direct: any user through either door (the local socket's root, a certificate or token on the
  TLS listener). RBAC decides, as kube-apiserver: `get pods/log`, `create pods/exec`; a denial is
  PERMISSION_DENIED in kube-apiserver's words. A pod bound here is served here; one bound
  elsewhere is forwarded to its node, exactly once.
- forwarded: the caller is a node (user system:node:NAME in group system:nodes, authenticated with
  its own certificate or token: impersonating a node never counts). The forwarding node authorized
  the requester; this node does not authorize again (a node has no pods/log or pods/exec rights of
  its own) but serves only pods bound to itself, in its own read of the API, and never forwards
  further. So a request crosses at most one hop: a forward loop (to itself, or ping-pong between
  nodes that disagree about where the pod is) ends in FAILED_PRECONDITION at the second node.
  The requester's name travels in metadata (FORWARDED_FOR) for this node's log and audit line
  only; nothing is decided from it.

What that trusts: a node credential may read the logs of and exec into any pod of the cluster,
as kube-apiserver's kubelet client certificate may on every kubelet. Node certificates are
cluster-admin-grade secrets.

Bounds: log pieces of about logs.CHUNK (64 KiB); exec output cut at 1 MiB per stream by the
runtime (oci.exec_), stdin at MAX_STDIN, the command at MAX_ARGV_BYTES; the dial times out after
podio_dial.DIAL_TIMEOUT; an exec runs until the caller's deadline or cancellation (the runc exec
is killed then, not the container)."""
import logging
import urllib.parse
from typing import Callable

import grpc

from ..api.podnet.api.v1 import api_pb2, api_pb2_grpc
from ..runtime import logs
from ..runtime.errors import PodError
from . import authn, kinds, objects
from .podio_dial import DialError, Dialer
from .rbac import Attributes

log = logging.getLogger(__name__)

FORWARDED_FOR = "podnet-forwarded-for"       # metadata: who asked the forwarding node
MIRROR = "kubernetes.io/config.mirror"       # kubelet/pod_sync.py's mirror pod annotation
SOURCE = "kubernetes.io/config.source"
MAX_STDIN = 1 << 20
MAX_ARGV_BYTES = 128 << 10
MAX_RELAYED_PIECE = 4 * logs.CHUNK           # a forwarded log piece larger than this is refused
IMPERSONATION_KEYS = (authn.IMPERSONATE_USER_KEY, authn.IMPERSONATE_GROUP_KEY,
                      authn.IMPERSONATE_UID_KEY)
C = grpc.StatusCode


class PodIOError(Exception):
    """A request that cannot be served, with its gRPC code and the message for the user."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _impersonating(context) -> bool:
    return any(k.lower() in IMPERSONATION_KEYS for k, _ in context.invocation_metadata() or ())


def _requester_from(context) -> str:
    for k, v in context.invocation_metadata() or ():
        if k.lower() == FORWARDED_FOR and isinstance(v, str):
            return urllib.parse.unquote(v)[:256]
    return "(not given)"


def container_name(pod: dict, name: str) -> str:
    """The container a request means, checked as kube-apiserver checks it."""
    spec = pod.get("spec") or {}
    pod_name = pod["metadata"]["name"]
    apps = [c.get("name") for c in spec.get("containers") or [] if isinstance(c, dict)]
    inits = [c.get("name") for c in spec.get("initContainers") or [] if isinstance(c, dict)]
    if not name:
        if len(apps) == 1:
            return apps[0]
        msg = (f"a container name must be specified for pod {pod_name}, choose one of: "
               f"[{' '.join(apps)}]")
        if inits:
            msg += f" or one of the init containers: [{' '.join(inits)}]"
        raise objects.BadRequest(msg)
    if name not in apps and name not in inits:
        raise objects.BadRequest(f"container {name} is not valid for pod {pod_name}")
    return name


def _waiting_reason(pod: dict, container: str, ctr=None) -> str:
    """Why a container has not started: the runtime's word when it has the container, else
    the pod status's, else ContainerCreating (as the kubelet says before the first start)."""
    if ctr is not None and "waiting" in ctr.state:
        return ctr.state["waiting"].get("reason") or "ContainerCreating"
    status = pod.get("status") or {}
    for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses")
                                                         or []):
        if isinstance(cs, dict) and cs.get("name") == container:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            return waiting.get("reason") or "ContainerCreating"
    return "ContainerCreating"


def _waiting(pod: dict, container: str, ctr=None) -> PodIOError:
    return PodIOError(C.FAILED_PRECONDITION,
                      f'container "{container}" in pod "{pod["metadata"]["name"]}" is waiting '
                      f"to start: {_waiting_reason(pod, container, ctr)}")


def _relayed(node: str, e: grpc.aio.AioRpcError) -> PodIOError:
    """The pod's node's answer, for the requester. Its refusal of THIS node's credentials is
    not the requester's fault: not passed on as UNAUTHENTICATED / PERMISSION_DENIED."""
    code, details = e.code(), e.details() or ""
    if code in (C.UNAUTHENTICATED, C.PERMISSION_DENIED):
        return PodIOError(C.INTERNAL, f'node "{node}" refused the request forwarded by this '
                                      f"node: {details}")
    if code in (C.UNAVAILABLE, C.DEADLINE_EXCEEDED):
        return PodIOError(code, f'error from node "{node}": {details}')
    return PodIOError(code, details)


class PodIO:
    """What both doors share: the API (authorization, the pod and node objects), this node's
    name, its pod runtime (a getter: the runtime is made after the API component), and the
    dialer for forwards. servicer(authenticate) -> the PodIOService of one door."""

    def __init__(self, api, node_name: str, runtime: Callable[[], object], dialer: Dialer):
        self.api, self.node, self.runtime, self.dialer = api, node_name, runtime, dialer

    def servicer(self, authenticate) -> "PodIOService":
        return PodIOService(self, authenticate)

    # -- what a request is about ----------------------------------------------------------

    async def resolve(self, user, forwarded: bool, verb: str, subresource: str,
                      namespace: str, name: str, container: str) -> tuple[dict, str, Attributes]:
        """(the API's pod, the container, the request's attributes): authorized (direct),
        found, bound, and for a forward bound to this node."""
        namespace = namespace or "default"
        attrs = Attributes(user, verb, "pods", subresource, namespace, name, "")
        if not name:
            raise objects.BadRequest("resource name may not be empty")
        if not forwarded:
            self.api.authorize(attrs)
        pod = await self.api.registry.get(kinds.BY_RESOURCE["pods"], namespace, name)
        container = container_name(pod, container)
        node = (pod.get("spec") or {}).get("nodeName") or ""
        if not node:
            raise PodIOError(C.FAILED_PRECONDITION, f"pod {name} does not have a host assigned")
        if forwarded and node != self.node:
            raise PodIOError(C.FAILED_PRECONDITION,
                             f'pod {name} is bound to node "{node}", not to node "{self.node}": '
                             "a forwarded request is never forwarded again")
        if verb == "create" and (pod.get("status") or {}).get("phase") in ("Succeeded",
                                                                           "Failed"):
            raise PodIOError(C.FAILED_PRECONDITION,
                             "cannot exec into a container in a completed pod; current phase "
                             f"is {pod['status']['phase']}")
        return pod, container, attrs

    def local(self, pod: dict, container: str):
        """(runtime, runtime container or None) of an API pod bound here: a cluster pod by its
        key and uid (an older pod of the same name is not it), a mirror pod by the node-local
        pod it mirrors."""
        rt = self.runtime()
        if rt is None:
            raise PodIOError(C.FAILED_PRECONDITION,
                             f'node "{self.node}" runs no pods (--no-pod-runtime)')
        meta = pod["metadata"]
        namespace = meta.get("namespace") or "default"
        mirrored = (meta.get("annotations") or {}).get(MIRROR)
        found = None
        if mirrored:
            # the mirror's name is NAME-NODE of the local pod (pod_sync.py); a pod that only
            # carries the annotation must name the right pod to be taken for its mirror
            found = next((p for p in rt.pods.values()
                          if p.uid == mirrored and p.namespace == namespace
                          and f"{p.name}-{self.node}" == meta["name"]
                          and (p.doc["metadata"].get("annotations") or {}).get(SOURCE) != "api"),
                         None)
        else:
            p = rt.pods.get(f"{namespace}/{meta['name']}")
            found = p if p is not None and p.uid == meta.get("uid") else None
        return rt, (found.containers.get(container) if found is not None else None)

    # -- logs -----------------------------------------------------------------------------

    async def local_logs(self, pod: dict, container: str, request):
        rt, c = self.local(pod, container)
        if c is None or (not request.previous and not logs.has_log(rt, c)):
            raise _waiting(pod, container, c)
        tail = None if request.tail_lines < 0 else request.tail_lines
        try:
            async for data in logs.container_log(rt, c, follow=request.follow, tail=tail,
                                                 previous=request.previous):
                yield data
        except PodError as e:
            raise PodIOError(C.NOT_FOUND if e.status == "not_found" else C.FAILED_PRECONDITION,
                             str(e)) from None

    async def forward_logs(self, pod: dict, request, requester: str):
        node = pod["spec"]["nodeName"]
        channel = await self._dial(node)
        try:
            call = api_pb2_grpc.PodIOServiceStub(channel).StreamPodLogs(
                request, metadata=self._metadata(requester))
            async for piece in call:
                if len(piece.data) > MAX_RELAYED_PIECE:
                    raise PodIOError(C.INTERNAL, f'node "{node}" sent a log piece of '
                                                 f"{len(piece.data)} bytes")
                yield piece.data
        except grpc.aio.AioRpcError as e:
            raise _relayed(node, e) from None
        finally:
            await channel.close()

    # -- exec -----------------------------------------------------------------------------

    async def local_exec(self, pod: dict, container: str, request, timeout: float | None
                         ) -> api_pb2.ExecPodResponse:
        from ..runtime import oci
        rt, c = self.local(pod, container)
        if c is None or "waiting" in c.state:
            raise _waiting(pod, container, c)
        if c.attempt is None or not c.running():
            raise PodIOError(C.FAILED_PRECONDITION, "unable to upgrade connection: container "
                                                    f'not found ("{container}")')
        try:
            rc, out, err = await oci.exec_(rt.oci, c.cid, list(request.command),
                                           stdin=request.stdin, timeout=timeout)
        except TimeoutError:
            raise PodIOError(C.DEADLINE_EXCEEDED, f"exec in pod {pod['metadata']['name']} "
                                                  "did not end before the deadline") from None
        return api_pb2.ExecPodResponse(stdout=out, stderr=err, exit_code=rc)

    async def forward_exec(self, pod: dict, request, requester: str, timeout: float | None
                           ) -> api_pb2.ExecPodResponse:
        node = pod["spec"]["nodeName"]
        channel = await self._dial(node)
        try:
            return await api_pb2_grpc.PodIOServiceStub(channel).ExecPod(
                request, metadata=self._metadata(requester), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise _relayed(node, e) from None
        finally:
            await channel.close()

    # -- forwarding -----------------------------------------------------------------------

    async def _dial(self, node: str):
        if node == self.node:    # resolve() serves those here; never dial ourselves
            raise PodIOError(C.INTERNAL, f'refusing to forward to this node "{node}"')
        try:
            node_obj = await self.api.registry.get(kinds.BY_RESOURCE["nodes"], "", node)
        except objects.NotFound:
            raise PodIOError(C.UNAVAILABLE, f'node "{node}" is not registered: its pods\' '
                                            "logs and exec cannot be reached") from None
        try:
            return await self.dialer.dial(node_obj)
        except DialError as e:
            raise PodIOError(C.UNAVAILABLE, str(e)) from None

    @staticmethod
    def _metadata(requester: str) -> tuple:
        return ((FORWARDED_FOR, urllib.parse.quote(requester, safe=":@")),)


class PodIOService(api_pb2_grpc.PodIOServiceServicer):
    """One door's servicer: `authenticate(context) -> user` is the door's (service.py)."""

    def __init__(self, io: PodIO, authenticate):
        self.io, self.authenticate = io, authenticate

    async def _caller(self, context) -> tuple[object, bool]:
        """(user, forwarded): forwarded when the caller is a node in its own name."""
        user = await self.authenticate(context)
        forwarded = authn.node_name(user) is not None and not _impersonating(context)
        return user, forwarded

    @staticmethod
    def _note(what: str, user, forwarded: bool, context) -> str:
        """The audit reason of a forwarded request (who asked the forwarding node), logged."""
        if not forwarded:
            return ""
        reason = f"forwarded by {user.name} for {_requester_from(context)}"
        log.info("%s: %s", what, reason)
        return reason

    async def _fail(self, context, e: Exception, attrs: Attributes | None, reason: str):
        from .service import CODES
        if isinstance(e, objects.ApiError):
            code, message = getattr(C, CODES.get(type(e), "INTERNAL")), e.message
        else:
            code, message = e.code, e.message
        if attrs is not None:       # authorized (or forwarded), then failed: audited as such
            self.io.api.record(attrs, True, code.name, reason)
        await context.abort(code, message)

    async def StreamPodLogs(self, request, context):
        attrs, reason = None, ""
        try:
            user, forwarded = await self._caller(context)
            if request.tail_lines < -1:
                raise objects.BadRequest(f"tail_lines {request.tail_lines}: give -1 (all), "
                                         "0 or more")
            pod, container, attrs = await self.io.resolve(
                user, forwarded, "get", "log", request.namespace, request.name,
                request.container)
            reason = self._note(f"logs of pod {attrs.namespace}/{attrs.name} container "
                                f"{container}", user, forwarded, context)
            if pod["spec"]["nodeName"] == self.io.node:
                stream = self.io.local_logs(pod, container, request)
            else:
                forward = api_pb2.StreamPodLogsRequest()
                forward.CopyFrom(request)
                forward.namespace, forward.container = attrs.namespace, container
                stream = self.io.forward_logs(pod, forward, user.name)
            async for data in stream:
                await context.write(api_pb2.StreamPodLogsResponse(data=data))
        except (objects.ApiError, PodIOError) as e:
            await self._fail(context, e, attrs, reason)

    async def ExecPod(self, request, context):
        attrs, reason = None, ""
        try:
            user, forwarded = await self._caller(context)
            pod, container, attrs = await self.io.resolve(
                user, forwarded, "create", "exec", request.namespace, request.name,
                request.container)
            _check_exec(request)
            reason = self._note(f"exec in pod {attrs.namespace}/{attrs.name} container "
                                f"{container}", user, forwarded, context)
            timeout = context.time_remaining()
            if pod["spec"]["nodeName"] == self.io.node:
                answer = await self.io.local_exec(pod, container, request, timeout)
            else:
                forward = api_pb2.ExecPodRequest()
                forward.CopyFrom(request)
                forward.namespace, forward.container = attrs.namespace, container
                answer = await self.io.forward_exec(pod, forward, user.name, timeout)
        except (objects.ApiError, PodIOError) as e:
            await self._fail(context, e, attrs, reason)
        self.io.api.record(attrs, True, "OK", reason)
        return answer


def _check_exec(request) -> None:
    if not request.command:
        raise objects.BadRequest("you must specify at least one command for the container")
    if sum(len(a.encode()) for a in request.command) > MAX_ARGV_BYTES:
        raise PodIOError(C.RESOURCE_EXHAUSTED, f"the command is longer than {MAX_ARGV_BYTES} "
                                               "bytes")
    if any("\0" in a for a in request.command):
        raise objects.BadRequest("the command contains a NUL character")
    if len(request.stdin) > MAX_STDIN:
        raise PodIOError(C.RESOURCE_EXHAUSTED, f"stdin of {len(request.stdin)} bytes is over "
                                               f"the {MAX_STDIN} byte limit")

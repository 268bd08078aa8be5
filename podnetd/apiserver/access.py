"""Who is calling and what they may do, wired for the request path: the authorizer's indexes
(RBAC objects, pod -> node) fed by informers of the API itself, and the gRPC authenticators of
the two doors (the local unix socket: root = system:admin; the TLS listener: certificate or
token). Impersonation (kubectl --as) works through both."""
import asyncio
import logging

from . import authn, node_authz, objects, rbac
from .authz import Authorizer

log = logging.getLogger(__name__)

# the API server's own reads that feed its caches: everything, as kube-apiserver's loopback
# client is system:apiserver in system:masters
INTERNAL_USER = authn.UserInfo("system:apiserver", "", (authn.MASTERS_GROUP,
                                                       authn.AUTHENTICATED_GROUP))
RBAC_RESOURCES = ("clusterroles", "clusterrolebindings", "roles", "rolebindings")


class Access:
    def __init__(self, token_file: str | None = None):
        self.rbac = rbac.RbacIndex()
        self.pod_nodes = node_authz.PodNodeIndex()
        self.authorizer = Authorizer(self.rbac, self.pod_nodes)
        self.tokens = authn.TokenFile.load(token_file) if token_file else None
        self.informers: list = []
        self.synced = asyncio.Event()

    async def start(self, api) -> None:
        """Feed the indexes from the API (called once its store answers)."""
        from ..controllers.informer import Informer
        client = api.as_user(INTERNAL_USER)

        def feed(index):
            def on_change(key, old, new):
                if new is None:
                    index.remove(old)
                else:
                    index.upsert(new)
            return on_change
        self.informers = [Informer(client, r, on_change=feed(self.rbac)) for r in RBAC_RESOURCES]
        self.informers.append(Informer(client, "pods", on_change=feed(self.pod_nodes)))
        for inf in self.informers:
            await inf.start()
        await asyncio.gather(*(inf.synced.wait() for inf in self.informers))
        self.synced.set()

    async def stop(self) -> None:
        for inf in self.informers:
            await inf.stop()

    def _identify(self, context, local: bool):
        creds = authn.credentials_from_grpc(context)
        return self._identify_creds(creds, local)

    def _identify_creds(self, creds, local: bool):
        try:
            user, requester = authn.identify(creds, local=local, tokens=self.tokens,
                                             authorizer=self.authorizer.decide)
        except authn.Unauthenticated as e:
            raise objects.Unauthorized(f"Unauthorized: {e}") from None
        except rbac.Forbidden as e:
            raise objects.Forbidden(str(e)) from None
        return user

    async def local(self, context):
        """The unix socket: only root reaches it (0600 in a 0700 directory)."""
        return self._identify(context, local=True)

    def remote(self, identity_of):
        """The TLS listener's authenticator; identity_of(context) -> the client certificate
        (DER or PEM bytes) the TLS front saw, or None."""
        async def authenticate(context):
            creds = authn.credentials_from_metadata(context.invocation_metadata() or (),
                                                    identity_of(context), context.peer() or "")
            return self._identify_creds(creds, local=False)
        return authenticate

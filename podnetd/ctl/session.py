"""One cluster command's connection: the target resolved from the global flags, the client, the
kinds the server serves (asked once), and objects printed as -o json|yaml|name show them."""
import json
import sys

from .apiclient import ApiClient, KubectlError
from .kubeconfig import ConfigError
from .resources import Kind, Kinds
from .target import Overrides, Target, resolve


def overrides(args) -> Overrides:
    return Overrides(config=getattr(args, "config", None), context=getattr(args, "context", None),
                     server=getattr(args, "server", None),
                     socket=args.socket if getattr(args, "socket_explicit", False) else None,
                     token=getattr(args, "token", None),
                     namespace=getattr(args, "namespace", None),
                     as_user=getattr(args, "as_user", None),
                     as_groups=tuple(getattr(args, "as_group", None) or ()))


def target(args) -> Target:
    try:
        return resolve(overrides(args))
    except ConfigError as e:
        raise KubectlError(str(e)) from None


class Session:
    def __init__(self, args):
        self.args = args
        self.target = target(args)
        self.client = ApiClient(self.target)
        self._kinds: Kinds | None = None

    @property
    def kinds(self) -> Kinds:
        if self._kinds is None:
            self._kinds = Kinds.fetch(self.client)
        return self._kinds

    def namespace(self, kind: Kind, all_namespaces: bool = False) -> str:
        if not kind.namespaced or all_namespaces:
            return ""
        return self.target.namespace

    def close(self) -> None:
        self.client.close()


def dump(obj, fmt: str) -> None:
    if fmt == "json":
        json.dump(obj, sys.stdout, indent=4)
        sys.stdout.write("\n")
    else:
        import yaml
        yaml.safe_dump(obj, sys.stdout, sort_keys=False, default_flow_style=False)


def as_list(items: list[dict], resource_version: str = "") -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": items,
            "metadata": {"resourceVersion": resource_version}}


def meta(obj: dict, key: str, default=""):
    m = obj.get("metadata")
    return m.get(key, default) if isinstance(m, dict) else default

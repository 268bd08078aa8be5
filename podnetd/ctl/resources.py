"""Kinds as a user names them (pods, pod, po, Pod, pod/web) resolved with the server's ListKinds,
as kubectl resolves them with discovery."""
import dataclasses

from .apiclient import KubectlError


@dataclasses.dataclass(frozen=True)
class Kind:
    kind: str                  # Pod
    resource: str              # pods
    api_version: str           # v1, rbac.authorization.k8s.io/v1
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def qualified(self) -> str:
        """kubectl's name of the type in `pod/web` and `pod "web" deleted`:
        the singular, with the group for kinds outside the core group."""
        return f"{self.singular}.{self.group}" if self.group else self.singular

    @classmethod
    def from_info(cls, info) -> "Kind":
        return cls(info.kind, info.resource, info.api_version, info.namespaced,
                   tuple(info.short_names), tuple(info.verbs))


class Kinds:
    def __init__(self, kinds: list[Kind]):
        self.kinds = kinds

    @classmethod
    def fetch(cls, client) -> "Kinds":
        return cls([Kind.from_info(k) for k in client.kinds()])

    def lookup(self, name: str) -> Kind:
        """pods, pod, po, Pod, pods.v1, roles.rbac.authorization.k8s.io."""
        want = name.strip().lower()
        base, _, group = want.partition(".")
        for k in self.kinds:
            names = {k.resource, k.singular, *k.short_names}
            if want in names or (base in names and group in (k.group, k.api_version,
                                                             k.api_version.replace("/", "."))):
                return k
        raise KubectlError(f'the server doesn\'t have a resource type "{name}"')

    def by_kind(self, kind: str, api_version: str) -> Kind:
        """A manifest's kind/apiVersion."""
        for k in self.kinds:
            if k.kind == kind and k.api_version == api_version:
                return k
        raise KubectlError(f'no matches for kind "{kind}" in version "{api_version}"')


def split_args(kinds: Kinds, args: list[str]) -> list[tuple[Kind, list[str]]]:
    """kubectl's TYPE[,TYPE] [NAME...] or TYPE/NAME [TYPE/NAME...]: [(kind, names)]."""
    if not args:
        raise KubectlError("you must specify the type of resource to get. Use "
                           "\"podnetctl api-resources\" for a complete list of supported resources")
    if "/" in args[0]:
        out: list[tuple[Kind, list[str]]] = []
        for arg in args:
            kind_name, _, name = arg.partition("/")
            if not kind_name or not name or "/" in name:
                raise KubectlError(f"arguments in resource/name form must have a single resource "
                                   f"and name: {arg!r}")
            kind = kinds.lookup(kind_name)
            for k, names in out:
                if k == kind:
                    names.append(name)
                    break
            else:
                out.append((kind, [name]))
        return out
    if any("/" in a for a in args[1:]):
        raise KubectlError("there is no need to specify a resource type as a separate argument "
                           "when passing arguments in resource/name form")
    types = [t for t in args[0].split(",") if t]
    if len(types) > 1 and len(args) > 1:
        raise KubectlError("names cannot be given with more than one resource type")
    return [(kinds.lookup(t), list(args[1:])) for t in types]

"""podnetctl config view | use-context | get-contexts | current-context: the client config."""
import sys

from . import kubeconfig
from .apiclient import KubectlError
from .kubeconfig import ConfigError
from .printers import format_rows
from .session import dump


def _config(args) -> kubeconfig.ClientConfig:
    path, named = kubeconfig.config_path(args.config)
    try:
        return kubeconfig.load(path, must_exist=named)
    except ConfigError as e:
        raise KubectlError(str(e)) from None


def cmd_view(args) -> int:
    config = _config(args)
    doc = config.raw or {"apiVersion": "v1", "kind": "Config", "clusters": None,
                         "contexts": None, "current-context": "", "users": None}
    if args.minify:
        try:
            doc = kubeconfig.minified(config, args.context or config.current_context)
        except ConfigError as e:
            raise KubectlError(str(e)) from None
    dump(doc if args.raw else kubeconfig.redacted(doc), args.output or "yaml")
    return 0


def cmd_use_context(args) -> int:
    config = _config(args)
    if not config.path or not config.raw and not config.contexts:
        raise KubectlError(f'no context exists with the name: "{args.name}"')
    try:
        kubeconfig.use_context(config, args.name)
    except (ConfigError, OSError) as e:
        raise KubectlError(str(e)) from None
    print(f'Switched to context "{args.name}".')
    return 0


def cmd_current_context(args) -> int:
    config = _config(args)
    if not config.current_context:
        raise KubectlError("current-context is not set")
    print(config.current_context)
    return 0


def cmd_get_contexts(args) -> int:
    config = _config(args)
    contexts = list(config.contexts.values())
    if args.name:
        contexts = [c for c in contexts if c.name in args.name]
        missing = set(args.name) - {c.name for c in contexts}
        if missing:
            raise KubectlError(f"context {sorted(missing)[0]} not found")
    if args.output == "name":
        for c in contexts:
            print(c.name)
        return 0
    rows = [["*" if c.name == config.current_context else "", c.name, c.cluster, c.user,
             c.namespace] for c in contexts]
    sys.stdout.write(format_rows(["CURRENT", "NAME", "CLUSTER", "AUTHINFO", "NAMESPACE"], rows))
    return 0


def register(sub, common) -> None:
    config = sub.add_parser("config", help="the client config (kubeconfig-shaped)")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = csub.add_parser("view", parents=[common], help="the config, secrets redacted")
    p.add_argument("--raw", action="store_true", help="show certificates and tokens too")
    p.add_argument("--minify", action="store_true", help="only the current context's parts")
    p.add_argument("-o", "--output", default="", choices=["", "yaml", "json"])
    p.set_defaults(func=cmd_view)
    p = csub.add_parser("use-context", parents=[common], help="set current-context")
    p.add_argument("name", metavar="CONTEXT")
    p.set_defaults(func=cmd_use_context)
    p = csub.add_parser("current-context", parents=[common], help="print current-context")
    p.set_defaults(func=cmd_current_context)
    p = csub.add_parser("get-contexts", parents=[common], help="list the contexts")
    p.add_argument("name", nargs="*", metavar="CONTEXT")
    p.add_argument("-o", "--output", default="", choices=["", "name"])
    p.set_defaults(func=cmd_get_contexts)

"""podnetctl entry point."""
import argparse
import os
import sys

from ..config import DEFAULT_SOCKET
from . import (apiresources, apply, auth, cluster, configcmd, describe, doctor, edit, get, lab,
               network, nodeops, podio, pods)
from .apiclient import ApiError, KubectlError
from .client import CtlError

# Each module adds its subcommands with register(subparsers, common): endpoints/node/status,
# nodes/routes, the netns lab, pods and images, the doctor (the node's own commands) ...
MODULES = [network, cluster, lab, pods, doctor]
# ... and kubectl's verbs on the cluster API (`get events` without a cluster: the node's events).
CLUSTER_MODULES = [get, apply, describe, edit, nodeops, podio, auth, apiresources, configcmd]

# Flags every command takes, accepted before the command as well as after it (as kubectl's
# global flags are): the option strings that take a value, and those that take none.
GLOBAL_FLAGS = ("--socket", "-o", "--output", "--config", "--context", "-s", "--server",
                "--token", "--as", "--as-group", "-n", "--namespace")
GLOBAL_SWITCHES = ("-A", "--all-namespaces")


def connection_flags() -> argparse.ArgumentParser:
    """Where the cluster API is and who calls it (kubectl's global flags)."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--socket", default=None,
                      help=f"the local podnetd's unix socket (default {DEFAULT_SOCKET})")
    conn.add_argument("--config", metavar="FILE",
                      help="client config (default $PODNET_CONFIG, ~/.config/podnet/config.yaml)")
    conn.add_argument("--context", help="the client config's context to use")
    conn.add_argument("-s", "--server", help="the API server: https://HOST:PORT")
    conn.add_argument("--token", help="bearer token for the API server")
    conn.add_argument("--as", dest="as_user", metavar="USER", help="act as this user")
    conn.add_argument("--as-group", action="append", metavar="GROUP",
                      help="act as a member of this group (repeat for more)")
    return conn


def build_parser() -> argparse.ArgumentParser:
    conn = connection_flags()
    common = argparse.ArgumentParser(add_help=False, parents=[conn])
    common.add_argument("-o", "--output", default="table", choices=["table", "json", "yaml"])
    kcommon = argparse.ArgumentParser(add_help=False, parents=[conn])
    kcommon.add_argument("-n", "--namespace", help="namespace (default: the context's, or default)")
    parser = argparse.ArgumentParser(prog="podnetctl", description="the podnet command line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in MODULES:
        module.register(sub, common)
    for module in CLUSTER_MODULES:
        module.register(sub, kcommon)
    return parser


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Split at the first `--`: podnetctl's own arguments, and the command to run (exec)."""
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1:]
    return argv, None


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Move the global flags, wherever they stand, behind the subcommand that parses them.

    argparse only knows `--socket` on the leaf parsers, so `podnetctl --socket X pod ls` would
    be refused; kubectl takes its global flags anywhere before `--`.
    """
    rest, flags = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in GLOBAL_FLAGS and "=" in arg:
            flags.append(arg)
        elif arg in GLOBAL_FLAGS and i + 1 < len(argv):
            flags += [arg, argv[i + 1]]
            i += 1
        elif arg in GLOBAL_SWITCHES:
            flags.append(arg)
        elif arg[:2] in ("-o", "-n", "-s") and not arg.startswith("--") and len(arg) > 2:
            flags.append(arg)                      # -ojson, -nprod
        else:
            rest.append(arg)
        i += 1
    return rest + flags


def parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    own, command = split_command(argv)
    args, unknown = parser.parse_known_args(hoist_global_flags(own))
    # `label po web a=b --overwrite c-`: argparse ends a positional list at the first option;
    # kubectl's verbs take their words anywhere, so the words after an option join the list
    rest = getattr(args, "positional_rest", None)
    if unknown and rest and not any(u.startswith("-") and u != "-" for u in unknown):
        setattr(args, rest, getattr(args, rest) + unknown)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    # an explicit --socket chooses the local podnetd over a client config's cluster
    args.socket_explicit = args.socket is not None
    args.socket = args.socket or DEFAULT_SOCKET
    if command is not None:
        if not hasattr(args, "cmd"):
            parser.error(f"'{args.command}' takes no command after --")
        if args.cmd:
            parser.error(f"unexpected arguments before --: {' '.join(args.cmd)}")
        args.cmd = command
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args) or 0
    except (ApiError, KubectlError) as e:
        sys.stderr.write(f"{e}\n")         # kubectl's own wording, as kubectl prints it
        return 1
    except CtlError as e:
        sys.stderr.write(f"podnetctl: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`podnetctl pod get X -o yaml | head`): stop quietly, as a shell
        # tool killed by SIGPIPE does. Point stdout at /dev/null so the interpreter's own flush
        # at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

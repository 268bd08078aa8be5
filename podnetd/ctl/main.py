"""podnetctl entry point."""
import argparse
import sys

from ..config import DEFAULT_SOCKET
from . import cluster, lab, network, pods
from .client import CtlError

# Each module adds its subcommands with register(subparsers, common): endpoints/node/status,
# nodes/routes, the netns lab, pods and images.
MODULES = [network, cluster, lab, pods]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=DEFAULT_SOCKET, help="podnetd's unix socket")
    common.add_argument("-o", "--output", default="table", choices=["table", "json", "yaml"])
    parser = argparse.ArgumentParser(prog="podnetctl", description="the podnet command line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in MODULES:
        module.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except CtlError as e:
        sys.stderr.write(f"podnetctl: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

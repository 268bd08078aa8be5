"""Generate the Python stubs for every .proto under proto/ into podnetd/api/.

The stubs are committed; tests/test_daemon_cli.py (test_committed_stubs_match_proto)
regenerates them into a temporary directory and fails when the committed ones have drifted.
Usage: python proto/generate.py [OUTPUT_DIR]
"""
import pathlib
import re
import sys

import grpc_tools
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent / "podnetd" / "api"
# google/protobuf/{timestamp,duration}.proto ship with grpcio-tools (their stubs with protobuf).
WELL_KNOWN = pathlib.Path(grpc_tools.__file__).resolve().parent / "_proto"
# protoc writes imports relative to the proto root ("from podnet.v1 import x_pb2", "from
# podnet.peer.v1 import ..."); the stubs live inside the podnetd package, so the imports are
# rewritten to absolute ones.
IMPORT_FIX = (re.compile(r"^from podnet\.([\w.]+) import", re.M), r"from podnetd.api.podnet.\1 import")


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{WELL_KNOWN}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for path in sorted(out.rglob("*_pb2*.py*")):
        text = IMPORT_FIX[0].sub(IMPORT_FIX[1], path.read_text())
        path.write_text(text)
        written.append(path)
    for pkg in {p.parent for p in written} | {out / "podnet"}:
        while pkg != out.parent and pkg.is_relative_to(out):
            (pkg / "__init__.py").touch()
            pkg = pkg.parent
    return written


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)

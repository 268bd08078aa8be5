"""The buf STANDARD lint rules podnet's API follows, checked over compiled descriptors (buf is
not packaged in Debian; tests/test_api_style.py runs this over every .proto under proto/).

Rules (buf's names): PACKAGE_VERSION_SUFFIX, PACKAGE_DIRECTORY_MATCH, SERVICE_SUFFIX,
RPC_REQUEST_STANDARD_NAME, RPC_RESPONSE_STANDARD_NAME, RPC_REQUEST_RESPONSE_UNIQUE,
ENUM_ZERO_VALUE_SUFFIX, ENUM_VALUE_PREFIX, ENUM_VALUE_UPPER_SNAKE_CASE, FIELD_LOWER_SNAKE_CASE,
MESSAGE_PASCAL_CASE, SERVICE_PASCAL_CASE, RPC_PASCAL_CASE. Plus podnet's own TIME_WELL_KNOWN_TYPE: a time is a
google.protobuf.Timestamp or Duration, never a number named *_unix, *_seconds or *_ms.
Usage: python proto/lint.py (exit 1 and one line per violation when any).
"""
import pathlib
import re
import sys

from google.protobuf import descriptor_pb2

PASCAL = re.compile(r"^[A-Z][A-Za-z0-9]*$")
LOWER_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
VERSION = re.compile(r"\.v\d+((alpha|beta)\d*)?$")
NUMERIC_TIME = re.compile(r"_(unix|seconds|ms)$")
NUMBERS = {descriptor_pb2.FieldDescriptorProto.TYPE_INT32, descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
           descriptor_pb2.FieldDescriptorProto.TYPE_UINT32, descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
           descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE, descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT}


def upper_snake(pascal: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", pascal).upper()


def _enums(f: descriptor_pb2.FileDescriptorProto):
    yield from ((e.name, e) for e in f.enum_type)
    stack = [(m.name, m) for m in f.message_type]
    while stack:
        path, m = stack.pop()
        yield from ((f"{path}.{e.name}", e) for e in m.enum_type)
        stack += [(f"{path}.{n.name}", n) for n in m.nested_type]


def _messages(f: descriptor_pb2.FileDescriptorProto):
    stack = [(m.name, m) for m in f.message_type]
    while stack:
        path, m = stack.pop()
        yield path, m
        stack += [(f"{path}.{n.name}", n) for n in m.nested_type]


def violations(f: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Every rule one .proto file breaks, as "file: element: RULE: why"."""
    out = []

    def bad(where: str, rule: str, why: str) -> None:
        out.append(f"{f.name}: {where}: {rule}: {why}")

    if not VERSION.search(f.package):
        bad(f.package or "(no package)", "PACKAGE_VERSION_SUFFIX", "the package must end in a version (.v1)")
    if str(pathlib.PurePosixPath(f.name).parent) != f.package.replace(".", "/"):
        bad(f.package, "PACKAGE_DIRECTORY_MATCH", f"the file must live in {f.package.replace('.', '/')}/")
    used: dict[str, str] = {}
    for s in f.service:
        if not PASCAL.match(s.name):
            bad(s.name, "SERVICE_PASCAL_CASE", "service names are PascalCase")
        if not s.name.endswith("Service"):
            bad(s.name, "SERVICE_SUFFIX", "service names end in Service")
        for m in s.method:
            where = f"{s.name}.{m.name}"
            if not PASCAL.match(m.name):
                bad(where, "RPC_PASCAL_CASE", "RPC names are PascalCase")
            for kind, type_name in (("Request", m.input_type), ("Response", m.output_type)):
                short = type_name.rsplit(".", 1)[-1]
                if short not in (f"{m.name}{kind}", f"{s.name}{m.name}{kind}"):
                    rule = "RPC_REQUEST_STANDARD_NAME" if kind == "Request" else "RPC_RESPONSE_STANDARD_NAME"
                    bad(where, rule, f"{kind.lower()} is {short}, not {m.name}{kind}")
                if type_name in used:
                    bad(where, "RPC_REQUEST_RESPONSE_UNIQUE", f"{short} is also used by {used[type_name]}")
                used[type_name] = where
    for path, e in _enums(f):
        prefix = upper_snake(e.name) + "_"
        zero = [v.name for v in e.value if v.number == 0]
        if not zero or zero[0] != prefix + "UNSPECIFIED":
            bad(path, "ENUM_ZERO_VALUE_SUFFIX", f"the zero value must be {prefix}UNSPECIFIED")
        for v in e.value:
            if not UPPER_SNAKE.match(v.name):
                bad(f"{path}.{v.name}", "ENUM_VALUE_UPPER_SNAKE_CASE", "enum values are UPPER_SNAKE_CASE")
            if not v.name.startswith(prefix):
                bad(f"{path}.{v.name}", "ENUM_VALUE_PREFIX", f"enum values start with {prefix}")
    for path, m in _messages(f):
        if not PASCAL.match(m.name):
            bad(path, "MESSAGE_PASCAL_CASE", "message names are PascalCase")
        for field in m.field:
            where = f"{path}.{field.name}"
            if not LOWER_SNAKE.match(field.name):
                bad(where, "FIELD_LOWER_SNAKE_CASE", "field names are lower_snake_case")
            if NUMERIC_TIME.search(field.name) and field.type in NUMBERS:
                bad(where, "TIME_WELL_KNOWN_TYPE",
                    "a time is a google.protobuf.Timestamp or Duration, not a number")
    return out


def compile_protos(root: pathlib.Path) -> list[descriptor_pb2.FileDescriptorProto]:
    """Every .proto under root, compiled by protoc (grpcio-tools) into descriptors."""
    import tempfile

    import grpc_tools
    from grpc_tools import protoc
    well_known = pathlib.Path(grpc_tools.__file__).resolve().parent / "_proto"
    protos = sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "set.pb"
        if protoc.main(["protoc", f"-I{root}", f"-I{well_known}", f"--descriptor_set_out={out}",
                        *protos]) != 0:
            raise SystemExit("protoc failed")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return list(fds.file)


if __name__ == "__main__":
    found = [v for f in compile_protos(pathlib.Path(__file__).resolve().parent) for v in violations(f)]
    print("\n".join(found) or "proto lint: clean")
    sys.exit(1 if found else 0)

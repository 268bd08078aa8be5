"""The API follows buf's STANDARD lint rules (proto/lint.py; buf itself is not packaged in
Debian), and the daemon's words round-trip through the API's enums and times (podnetd/apiconv.py)."""
import math
import pathlib
import sys

import pytest

from podnetd import apiconv
from podnetd.api.podnet.v1 import cluster_pb2, node_pb2

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "proto"))
import lint  # noqa: E402


def test_every_proto_follows_the_standard_rules():
    files = lint.compile_protos(REPO / "proto")
    assert {f.package for f in files} >= {"podnet.v1", "podnet.peer.v1"}
    assert [v for f in files for v in lint.violations(f)] == []


BAD = """syntax = "proto3";
package podnet.v1;
service Node {
  rpc GetNodeInfo(Empty) returns (NodeInfo);
  rpc Status(Empty) returns (StatusResponse);
}
message Empty {}
message NodeInfo { int64 created_unix = 1; double heartbeat_age_seconds = 2; }
message StatusResponse { string Mode = 1; }
enum Mode { HOST_GW = 0; MODE_VXLAN = 1; }
"""


def test_lint_catches_the_old_style(tmp_path):
    (tmp_path / "podnet" / "v1").mkdir(parents=True)
    (tmp_path / "podnet" / "v1" / "bad.proto").write_text(BAD)
    (tmp_path / "elsewhere.proto").write_text('syntax = "proto3";\npackage podnet;\n')
    found = [v for f in lint.compile_protos(tmp_path) for v in lint.violations(f)]
    rules = {v.split(": ")[2] for v in found}
    assert rules == {"SERVICE_SUFFIX", "RPC_REQUEST_STANDARD_NAME", "RPC_RESPONSE_STANDARD_NAME",
                     "RPC_REQUEST_RESPONSE_UNIQUE", "ENUM_ZERO_VALUE_SUFFIX", "ENUM_VALUE_PREFIX",
                     "FIELD_LOWER_SNAKE_CASE", "TIME_WELL_KNOWN_TYPE", "PACKAGE_VERSION_SUFFIX",
                     "PACKAGE_DIRECTORY_MATCH"}, found
    assert "bad.proto: Node.Status: RPC_REQUEST_RESPONSE_UNIQUE: Empty is also used by " \
           "Node.GetNodeInfo" in "\n".join(found)
    assert sum("TIME_WELL_KNOWN_TYPE" in v for v in found) == 2


@pytest.mark.parametrize("enum, words", [
    (node_pb2.EndpointState, ["active", "releasing"]),
    (cluster_pb2.PeerMode, ["self", "host-gw", "vxlan", "unreachable"]),
    (cluster_pb2.EntryKind, ["route", "neigh", "fdb"]),
    (cluster_pb2.EntryState, ["present", "missing", "foreign"]),
    (cluster_pb2.Store, ["static", "etcd"]),
    (cluster_pb2.Backend, ["auto", "host-gw", "vxlan"]),
])
def test_enum_words_round_trip(enum, words):
    values = [apiconv.enum_value(enum, w) for w in words]
    assert 0 not in values and len(set(values)) == len(words)
    assert [apiconv.enum_word(enum, v) for v in values] == words
    assert apiconv.enum_value(enum, "") == 0 and apiconv.enum_word(enum, 0) == ""
    assert apiconv.enum_word(enum, 99) == "unknown(99)"
    with pytest.raises(ValueError, match=f"{enum.DESCRIPTOR.full_name}: no value for 'bogus'"):
        apiconv.enum_value(enum, "bogus")


def test_times_round_trip_and_bad_durations_are_refused():
    assert apiconv.unix_seconds(apiconv.timestamp(1_700_000_000.5)) == 1_700_000_000.5
    assert apiconv.seconds(apiconv.duration(2.25)) == 2.25
    for bad in (math.nan, math.inf, -math.inf, apiconv.MAX_DURATION_SECONDS + 1):
        with pytest.raises(ValueError, match="not a duration"):
            apiconv.duration(bad)


def test_message_dict_prints_words():
    msg = cluster_pb2.ListRoutesResponse(entries=[cluster_pb2.ProgrammedEntry(
        kind=cluster_pb2.ENTRY_KIND_FDB, mode=cluster_pb2.PEER_MODE_VXLAN,
        state=cluster_pb2.ENTRY_STATE_MISSING, node="n2")])
    (entry,) = apiconv.message_dict(msg)["entries"]
    assert (entry["kind"], entry["mode"], entry["state"], entry["node"]) == ("fdb", "vxlan", "missing", "n2")
    node = apiconv.message_dict(cluster_pb2.ClusterNode(heartbeat_age=apiconv.duration(1.5)))
    assert node["heartbeat_age"] == "1.500s" and node["mode"] == ""


def test_podnetctl_refuses_durations_the_api_cannot_carry():
    """A Duration holds about 10,000 years: podnetctl says so instead of a protobuf traceback."""
    import argparse

    from podnetd.ctl import pods
    from podnetd.ctl.client import CtlError
    for text in ("1e300", "inf", "nan", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="give seconds, 0 or more"):
            pods.grace_seconds(text)
    assert pods.grace_seconds("30") == 30
    args = argparse.Namespace(cmd=["true"], stdin=False, timeout=1e300, name="p", namespace="default",
                              container="", socket="/nonexistent/podnetd.sock")
    with pytest.raises(CtlError, match="pod exec: --timeout 1e\\+300 s: not a duration"):
        pods.cmd_exec(args)

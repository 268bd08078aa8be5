"""Values read from etcd are untrusted: the pure parsing of a key and its value into a node
record (podnetd.cluster.etcd.record_from_kv / records_from_listing), fuzzed with hypothesis."""
import ipaddress
import json

import pytest
from hypothesis import given, settings, strategies as st

from podnetd.cluster.records import vtep_mac
from podnetd.cluster.etcd import (MAX_VALUE_BYTES, BadRecord, alive_from_listing, block_key,
                                  key_block, owner_name, record_from_kv, records_from_listing)

CLUSTER = "10.98.0.0/16"
GOOD = {"name": "n2", "underlay_ip": "192.168.200.2", "pod_cidr": "10.98.2.0/24",
        "vtep_mac": vtep_mac("n2"), "heartbeat_ms": 1764660000000, "peer_address": "",
        "started_ms": 1764660000000}


def value(**changes) -> bytes:
    if isinstance(changes.get("name"), str) and "vtep_mac" not in changes:
        changes["vtep_mac"] = vtep_mac(changes["name"])
    return json.dumps({**GOOD, **changes}).encode()


def meta(key: str, lease="7587", create="5", mod="9") -> dict:
    return {"key": key.encode(), "lease": lease, "create_revision": create, "mod_revision": mod}


def parse(v: bytes, key: str = "/podnet/nodes/10-98-2-0-24"):
    return record_from_kv(key.encode(), v, CLUSTER, 24)


def test_a_good_record_parses():
    r = parse(value())
    assert (r.name, r.pod_cidr, r.underlay_ip, r.vtep_mac) == ("n2", "10.98.2.0/24", "192.168.200.2",
                                                                vtep_mac("n2"))
    assert parse(value(vtep_mac="")).vtep_mac == ""  # a host-gw-only node publishes none
    assert key_block(block_key("10.98.2.0/24")) == ipaddress.ip_network("10.98.2.0/24")


@pytest.mark.parametrize("v,key,reason", [
    # the value must describe the block its key names
    (value(pod_cidr="10.98.3.0/24"), None, "not the key's block"),
    (value(pod_cidr="10.98.0.0/16"), None, "not the key's block"),
    (value(pod_cidr="10.98.0.0/16"), "/podnet/nodes/10-98-0-0-16", "not a /24 block"),
    (value(pod_cidr="10.99.2.0/24"), "/podnet/nodes/10-99-2-0-24", "not a /24 block of the cluster"),
    (value(), "/podnet/nodes/n2", "does not name an IPv4 block"),
    (value(), "/podnet/nodes/10-98-02-0-24", "does not name an IPv4 block"),
    (value(), "/podnet/nodes/10-98-2-0-024", "canonical"),
    (value(), "/podnet/nodes/10-98-2-1-24", "does not name an IPv4 block"),
    # well-formed fields
    (value(pod_cidr="fd00::/64"), None, "not the key's block"),
    (value(underlay_ip="fe80::1"), None, "not an IPv4 address"),
    (value(underlay_ip="not an ip"), None, "not an IPv4 address"),
    (value(underlay_ip="127.0.0.1"), None, "not a unicast"),
    (value(underlay_ip="224.0.0.1"), None, "not a unicast"),
    (value(underlay_ip="10.98.5.5"), None, "inside the cluster CIDR"),
    (value(heartbeat_ms=2 ** 63), None, "field 'heartbeat_ms': .* is not a time"),
    (value(heartbeat_ms=-1), None, "field 'heartbeat_ms': -1 is not a time"),
    (value(started_ms=1e400), None, "field 'started_ms': expected an integer"),
    (value(heartbeat_ms=True), None, "field 'heartbeat_ms': expected an integer"),
    (value(name=["n2"]), None, "field 'name': expected a string"),
    (value(name="n2\n"), None, "field 'name': not a DNS subdomain"),
    (value(name=""), None, "field 'name': not a DNS subdomain"),
    (value(name="x" * 300), None, "field 'name': not a DNS subdomain"),
    (value(vtep_mac="01:00:5e:00:00:01"), None, "not a unicast MAC"),
    (value(vtep_mac="zz"), None, "field 'vtep_mac': .* is not a MAC address"),
    (value(vtep_mac=vtep_mac("n3")), None, "is not node n2's VTEP MAC"),
    (value(peer_address="x" * 100), None, "field 'peer_address': longer than"),
    (b"not json", None, "not JSON"),
    (b"\xff\xfe", None, "not JSON"),
    (b"[1, 2]", None, "not an object"),
    (b"[" * 2000 + b"]" * 2000, None, "too deep"),
    (b" " * (MAX_VALUE_BYTES + 1), None, "bytes"),
])
def test_bad_records_are_refused_with_a_reason(v, key, reason):
    with pytest.raises(BadRecord, match=reason):
        parse(v, key or "/podnet/nodes/10-98-2-0-24")


def test_listing_keeps_good_records_and_reports_each_bad_one():
    listing = [
        (value(), meta("/podnet/nodes/10-98-2-0-24", create="5")),
        # a record naming n3 at a key of another block: the value is checked against its key
        (value(name="n3", pod_cidr="10.98.2.0/24"), meta("/podnet/nodes/10-98-7-0-24")),
        (b"garbage", meta("/podnet/nodes/10-98-8-0-24")),
        (value(name="n4", pod_cidr="10.98.4.0/24"), meta("/podnet/nodes/10-98-4-0-24", lease=None)),
        (value(name="n5", pod_cidr="10.98.5.0/24", started_ms=0),
         meta("/podnet/nodes/10-98-5-0-24", create="12")),
    ]
    found, ignored = records_from_listing(listing, CLUSTER, 24)
    assert sorted(found) == ["n2", "n5"]
    # the claim order is etcd's create revision, not a time the writer put in the value
    assert found["n2"].started_ms == 5 and found["n5"].started_ms == 12
    reasons = {key: reason for key, _, reason in ignored}
    assert set(reasons) == {"/podnet/nodes/10-98-7-0-24", "/podnet/nodes/10-98-8-0-24",
                            "/podnet/nodes/10-98-4-0-24"}
    assert "not the key's block" in reasons["/podnet/nodes/10-98-7-0-24"]
    assert "no lease" in reasons["/podnet/nodes/10-98-4-0-24"]


@pytest.mark.parametrize("order", [1, -1])
def test_a_name_at_two_keys_keeps_the_older_claim(order):
    listing = [(value(), meta("/podnet/nodes/10-98-2-0-24", create="5")),
               (value(pod_cidr="10.98.9.0/24"), meta("/podnet/nodes/10-98-9-0-24", create="30"))]
    found, ignored = records_from_listing(listing[::order], CLUSTER, 24)
    assert found["n2"].pod_cidr == "10.98.2.0/24"
    assert [k for k, _, _ in ignored] == ["/podnet/nodes/10-98-9-0-24"]


# -- fuzzing: anything gives a record that matches its key, or BadRecord -------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                      st.floats(allow_nan=True), st.text(max_size=40))
json_any = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
field_values = {
    "name": st.one_of(st.sampled_from(["n1", "node-2.example", ""]), json_any),
    "underlay_ip": st.one_of(st.ip_addresses().map(str), json_any),
    "pod_cidr": st.one_of(st.sampled_from(["10.98.2.0/24", "10.98.2.0/23", "10.98.2.1/24", "fd00::/64",
                                           "10.98.2.0/24 ", "0.0.0.0/0"]), json_any),
    "vtep_mac": st.one_of(st.sampled_from(["", "02:00:00:00:00:01", "FF:FF:FF:FF:FF:FF", vtep_mac("n1")]),
                          json_any),
    "heartbeat_ms": st.one_of(st.integers(min_value=-2 ** 64, max_value=2 ** 64), json_any),
    "started_ms": st.one_of(st.integers(min_value=-2 ** 64, max_value=2 ** 64), json_any),
    "peer_address": json_any,
}
records = st.fixed_dictionaries({}, optional=field_values).map(lambda d: json.dumps(d).encode())
raw_values = st.one_of(records, st.binary(max_size=300), json_any.map(lambda v: json.dumps(v).encode()))
keys = st.one_of(st.sampled_from(["/podnet/nodes/10-98-2-0-24", "/podnet/nodes/10-98-2-0-23",
                                  "/podnet/nodes/10-98-2-0-024", "/podnet/nodes/10-98-2-0-24-1"]),
                 st.text(max_size=40).map(lambda t: "/podnet/nodes/" + t), st.binary(max_size=40))


@settings(max_examples=400, deadline=None)
@given(key=keys, v=raw_values)
def test_fuzz_value_parsing(key, v):
    try:
        r = record_from_kv(key, v, CLUSTER, 24)
    except BadRecord as e:
        assert str(e)
        return
    assert ipaddress.ip_network(r.pod_cidr) == key_block(key)
    assert ipaddress.ip_network(r.pod_cidr).subnet_of(ipaddress.ip_network(CLUSTER))
    ipaddress.IPv4Address(r.underlay_ip)
    assert 0 <= r.heartbeat_ms < 2 ** 63 and isinstance(r.name, str) and r.name


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(raw_values, st.one_of(
    st.builds(meta, keys.map(lambda k: k if isinstance(k, str) else k.decode("latin-1")),
              st.one_of(st.none(), st.text(max_size=5), st.just("1")),
              st.text(max_size=5), st.text(max_size=5)),
    json_any)), max_size=6))
def test_fuzz_whole_listing(listing):
    found, ignored = records_from_listing(listing, CLUSTER, 24)
    # every entry is either a record or reported, none is lost and none raises
    assert len(found) + len(ignored) == len(listing)
    for name, r in found.items():
        assert r.name == name


# -- liveness keys: a node is Ready when the holder of a claim has a current liveness key ----------

def alive_meta(block_dashes: str, lease="99", mod="20") -> dict:
    return {"key": f"/podnet/alive/{block_dashes}".encode(), "lease": lease, "mod_revision": mod}


def test_liveness_counts_only_for_the_holder_of_the_claim():
    claims, _ = records_from_listing([
        (value(), meta("/podnet/nodes/10-98-2-0-24")),
        (value(name="n5", pod_cidr="10.98.5.0/24"), meta("/podnet/nodes/10-98-5-0-24")),
        (value(name="n6", pod_cidr="10.98.6.0/24"), meta("/podnet/nodes/10-98-6-0-24")),
        (value(name="n7", pod_cidr="10.98.7.0/24"), meta("/podnet/nodes/10-98-7-0-24"))],
        CLUSTER, 24)
    listing = [
        (b'{"name": "n2"}', alive_meta("10-98-2-0-24")),
        # n6's block, but naming n5: a forger cannot make one node look alive by another's key
        (b'{"name": "n5"}', alive_meta("10-98-6-0-24")),
        (b'{"name": "n7"}', alive_meta("10-98-7-0-24", lease=None)),   # never expires
        (b"garbage", alive_meta("10-98-5-0-24")),
        (b'{"name": "n9"}', alive_meta("10-98-9-0-24")),   # nobody's claim: released, skipped
        (b'{"name": "n2"}', alive_meta("10-98-2-0-024")),  # not a canonical block key
    ]
    alive, ignored = alive_from_listing(listing, claims)
    assert alive == {"n2"}
    reasons = {key: reason for key, _, reason in ignored}
    assert set(reasons) == {"/podnet/alive/10-98-6-0-24", "/podnet/alive/10-98-7-0-24",
                            "/podnet/alive/10-98-5-0-24", "/podnet/alive/10-98-2-0-024"}
    assert "n6 does" in reasons["/podnet/alive/10-98-6-0-24"]
    assert "no lease" in reasons["/podnet/alive/10-98-7-0-24"]
    assert "not JSON" in reasons["/podnet/alive/10-98-5-0-24"]


def test_owner_name_of_any_value():
    assert owner_name(value()) == "n2"
    assert owner_name(b'{"name": "n2"}') == "n2"   # no other field needed to release a claim
    assert owner_name(b"[1]") is None and owner_name(b'{"name": 3}') is None
    assert owner_name(b"\xff") is None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(raw_values, st.one_of(
    st.builds(alive_meta, st.sampled_from(["10-98-2-0-24", "10-98-3-0-24", "x"]),
              st.one_of(st.none(), st.text(max_size=5), st.just("1"))),
    json_any)), max_size=6))
def test_fuzz_liveness_listing(listing):
    claims, _ = records_from_listing([(value(), meta("/podnet/nodes/10-98-2-0-24"))], CLUSTER, 24)
    alive, ignored = alive_from_listing(listing, claims)
    assert alive <= {"n2"} and len(ignored) <= len(listing)

"""Peer records are untrusted input (pure logic, no kernel, no network): every field validated,
one bad record dropped without stopping the others, hearsay never overriding what a node says
itself, claim times chosen by the receiver, and bounded state under a flood of forged names."""
import dataclasses
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podnetd.cluster import records
from podnetd.cluster.flags import ClusterConfig
from podnetd.cluster.store import LocalNode
from podnetd.cluster.bounded import LruDict, RateLimitedLog
from podnetd.cluster.records import (Membership, NodeRecord, RecordError, Verdict, conflicts,
                                     validate_record)

CLUSTER = "10.1.0.0/16"
NOW = 1_700_000_000_000


def rec(name, cidr, ip="192.168.1.50", hb=NOW, started=1, mac=None, peer=None):
    mac = records.vtep_mac(name) if mac is None else mac
    return NodeRecord(name, ip, cidr, mac, hb, peer if peer is not None else f"{ip}:7946", started)


def wire(**over):
    good = {"name": "n2", "underlay_ip": "192.168.1.2", "pod_cidr": "10.1.2.0/24",
            "vtep_mac": records.vtep_mac("n2"), "heartbeat_ms": NOW, "peer_address": "192.168.1.2:7946",
            "started_ms": NOW - 5000}
    return {**good, **over}


# -- validation ------------------------------------------------------------------------------

def test_a_good_record_is_returned_normalised():
    r = validate_record(wire(vtep_mac=records.vtep_mac("n2").upper()), cluster_cidr=CLUSTER, now=NOW)
    assert r == NodeRecord("n2", "192.168.1.2", "10.1.2.0/24", records.vtep_mac("n2"), NOW,
                           "192.168.1.2:7946", NOW - 5000)
    # optional fields, unknown keys ignored
    minimal = {"name": "n2", "underlay_ip": "192.168.1.2", "pod_cidr": "10.1.2.0/24",
               "heartbeat_ms": 5, "future_field": [1, 2]}
    assert validate_record(minimal, cluster_cidr=CLUSTER, now=NOW).vtep_mac == ""
    assert validate_record(wire(pod_cidr="10.1.2.0/25"), cluster_cidr=CLUSTER, now=NOW)
    assert validate_record(wire(peer_address="[fd00::1]:7946"), cluster_cidr=CLUSTER, now=NOW)


@pytest.mark.parametrize("over,field,why", [
    ({"name": "evil name"}, "name", "DNS subdomain"),
    ({"name": "a" * 254}, "name", "DNS subdomain"),
    ({"name": ""}, "name", "DNS subdomain"),
    ({"name": 7}, "name", "expected a string"),
    ({"name": "-n2"}, "name", "DNS subdomain"),
    ({"pod_cidr": "fd00::/64"}, "pod_cidr", "not an IPv4 network"),
    ({"pod_cidr": "10.1.2.1/24"}, "pod_cidr", "not an IPv4 network"),
    ({"pod_cidr": "10.2.0.0/24"}, "pod_cidr", "outside the cluster CIDR"),
    ({"pod_cidr": "10.0.0.0/15"}, "pod_cidr", "outside the cluster CIDR"),
    ({"pod_cidr": "10.1.2.0/31"}, "pod_cidr", "between 16 and 30"),
    ({"pod_cidr": "010.1.2.0/24"}, "pod_cidr", "not an IPv4 network"),
    ({"pod_cidr": ""}, "pod_cidr", "missing"),
    ({"underlay_ip": "not-an-ip"}, "underlay_ip", "not an IPv4 address"),
    ({"underlay_ip": "fd00::1"}, "underlay_ip", "not an IPv4 address"),
    ({"underlay_ip": "224.0.0.1"}, "underlay_ip", "unicast"),
    ({"underlay_ip": "0.0.0.0"}, "underlay_ip", "unicast"),
    ({"underlay_ip": "127.0.0.1"}, "underlay_ip", "unicast"),
    ({"underlay_ip": "255.255.255.255"}, "underlay_ip", "unicast"),
    ({"underlay_ip": None}, "underlay_ip", "expected a string"),
    ({"vtep_mac": "01:00:5e:00:00:01"}, "vtep_mac", "unicast"),
    ({"vtep_mac": "00:00:00:00:00:00"}, "vtep_mac", "unicast"),
    ({"vtep_mac": "02:aa:bb:cc:dd"}, "vtep_mac", "not a MAC"),
    ({"vtep_mac": records.vtep_mac("n3")}, "vtep_mac", "not node n2's VTEP MAC"),
    ({"heartbeat_ms": 2 ** 63}, "heartbeat_ms", "not a time"),
    ({"heartbeat_ms": 2 ** 63 - 1}, "heartbeat_ms", "not a time"),
    ({"heartbeat_ms": NOW + records.MAX_FUTURE_MS + 1}, "heartbeat_ms", "not a time"),
    ({"heartbeat_ms": -1}, "heartbeat_ms", "not a time"),
    ({"heartbeat_ms": 0}, "heartbeat_ms", "not a time"),
    ({"heartbeat_ms": True}, "heartbeat_ms", "expected an integer"),
    ({"heartbeat_ms": 1.5}, "heartbeat_ms", "expected an integer"),
    ({"started_ms": -5}, "started_ms", "not a time"),
    ({"peer_address": "192.168.1.2"}, "peer_address", "not IP:PORT"),
    ({"peer_address": "192.168.1.2:0"}, "peer_address", "not IP:PORT"),
    ({"peer_address": "192.168.1.2:99999"}, "peer_address", "not IP:PORT"),
    ({"peer_address": "example.com:7946"}, "peer_address", "not IP:PORT"),
    ({"peer_address": "127.0.0.1:7946"}, "peer_address", "unicast"),
    ({"peer_address": "192.168.1.2:07946"}, "peer_address", "unicast"),
    ({"underlay_ip": "1" * 100}, "underlay_ip", "longer than 64"),
])
def test_each_bad_field_is_a_record_error_naming_it(over, field, why):
    with pytest.raises(RecordError) as e:
        validate_record(wire(**over), cluster_cidr=CLUSTER, now=NOW)
    assert e.value.field == field and why in str(e.value), str(e.value)
    assert str(e.value).startswith("record ")


def test_a_configured_block_size_is_enforced():
    assert validate_record(wire(), cluster_cidr=CLUSTER, cidr_size=24, now=NOW)
    with pytest.raises(RecordError, match="not a /24 block"):
        validate_record(wire(pod_cidr="10.1.2.0/25"), cluster_cidr=CLUSTER, cidr_size=24, now=NOW)
    with pytest.raises(RecordError, match="expected a mapping"):
        validate_record(["n2"], cluster_cidr=CLUSTER, now=NOW)


_text = st.one_of(st.text(max_size=40), st.sampled_from(
    ["n2", "10.1.2.0/24", "10.1.2.0/31", "192.168.1.2", "fd00::/64", "02:aa:bb:cc:dd:ee",
     "192.168.1.2:7946", "[fd00::1]:7946", "10.1.0.0/16", "0.0.0.0", "a" * 300]))
_value = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                   st.floats(allow_nan=True), _text, st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.dictionaries(st.sampled_from(records.FIELDS + ("extra",)), _value, max_size=9),
    st.fixed_dictionaries({f: _value for f in records.FIELDS}),
    st.builds(lambda over: wire(**over),
              st.dictionaries(st.sampled_from(records.FIELDS), _value, max_size=2)),
    _value))
def test_fuzz_any_input_is_a_record_or_a_record_error(data):
    try:
        r = validate_record(data, cluster_cidr=CLUSTER, now=NOW)
    except RecordError as e:
        assert str(e).startswith("record ")
        return
    assert isinstance(r, NodeRecord)
    # a record that passed is usable by everything downstream without raising
    assert conflicts([r, rec("x", "10.1.200.0/24")], CLUSTER) is not None
    assert validate_record(r, cluster_cidr=CLUSTER, now=NOW) == r


# -- hearsay and first-hand ------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def joined_membership(clock=None, **kw):
    m = Membership("self", timeout_s=10, clock=clock or Clock(), wall=lambda: NOW, **kw)
    m.set_self(rec("self", "10.1.0.0/24"))
    m.joined = True
    return m


def test_hearsay_never_changes_a_known_node_and_first_hand_always_can():
    m = joined_membership()
    n2 = rec("n2", "10.1.2.0/24", ip="192.168.1.2", hb=NOW - 10)
    assert m.judge(n2, firsthand=True) == Verdict.CHANGED
    # someone else says n2 moved (newer heartbeat): ignored, whichever field
    for moved in (rec("n2", "10.1.2.0/24", ip="192.168.1.66", hb=NOW),
                  rec("n2", "10.1.9.0/24", ip="192.168.1.2", hb=NOW),
                  rec("n2", "10.1.2.0/24", ip="192.168.1.2", hb=NOW, mac="02:00:00:00:00:66"),
                  rec("n2", "10.1.2.0/24", ip="192.168.1.2", hb=NOW, peer="192.168.1.66:7946")):
        assert m.judge(moved) == Verdict.HEARSAY_CONFLICT
    assert m.records["n2"].underlay_ip == "192.168.1.2" and "n2" in m.firsthand
    # relayed heartbeats of the same record keep it alive (that is what gossip is for)
    assert m.judge(rec("n2", "10.1.2.0/24", ip="192.168.1.2", hb=NOW - 5)) == Verdict.REFRESHED
    assert m.records["n2"].heartbeat_ms == NOW - 5 and "n2" in m.firsthand
    # an unknown node is learnt from hearsay; its own word replaces it even with an older heartbeat
    assert m.judge(rec("n3", "10.1.3.0/24", ip="192.168.1.99", hb=NOW)) == Verdict.CHANGED
    assert "n3" not in m.firsthand
    assert m.judge(rec("n3", "10.1.3.0/24", ip="192.168.1.3", hb=NOW - 999), firsthand=True) == Verdict.CHANGED
    assert m.records["n3"].underlay_ip == "192.168.1.3" and "n3" in m.firsthand
    # a first-hand record is not replaced by an older first-hand one (reordered delivery)
    assert m.judge(rec("n3", "10.1.3.0/24", ip="192.168.1.4", hb=NOW - 1000), firsthand=True) == Verdict.STALE


def test_a_withdrawn_node_comes_back_only_newer_or_by_itself():
    clock = Clock()
    m = joined_membership(clock)
    m.merge(rec("a", "10.1.1.0/24", hb=NOW - 100), firsthand=True)
    clock.t += 11
    assert m.expire() == ["a"]
    assert m.judge(rec("a", "10.1.1.0/24", hb=NOW - 100)) == Verdict.STALE  # a stale copy
    assert m.judge(rec("a", "10.1.1.0/24", hb=NOW - 200), firsthand=True) == Verdict.CHANGED


def test_claim_times_are_the_receivers_once_joined():
    m = Membership("self", timeout_s=10, clock=Clock(), wall=lambda: NOW)
    m.set_self(rec("self", "10.1.0.0/24", started=NOW - 10_000))
    # the view we join with carries the cluster's claim times (we cannot know better)
    m.merge(rec("n2", "10.1.2.0/24", started=NOW - 50_000))
    assert m.records["n2"].started_ms == NOW - 50_000
    m.joined = True
    # afterwards a claim is as old as our first sight of it, whatever it says
    m.merge(rec("evil", "10.1.2.0/24", started=1), firsthand=True)
    assert m.records["evil"].started_ms == NOW
    refused = conflicts(m.all(), CLUSTER)
    assert set(refused) == {"evil"} and "overlaps node n2's 10.1.2.0/24" in refused["evil"]
    # a claim on our own CIDR loses to ours too
    m.merge(rec("evil2", "10.1.0.0/25", started=1), firsthand=True)
    assert "evil2" in conflicts(m.all(), CLUSTER) and "self" not in conflicts(m.all(), CLUSTER)
    # the same claim keeps its time across heartbeats and a first-hand confirmation
    m.merge(rec("n2", "10.1.2.0/24", hb=NOW + 5, started=3), firsthand=True)
    assert m.records["n2"].started_ms == NOW - 50_000


# -- bounded state ---------------------------------------------------------------------------

def test_a_flood_of_forged_names_stops_at_the_caps():
    clock = Clock()
    m = joined_membership(clock, max_nodes=50, max_tombstones=30)
    real = rec("n2", "10.1.2.0/24", ip="192.168.1.2")
    m.merge(real, firsthand=True)
    verdicts = [m.judge(rec(f"forged{i}", f"10.1.{(i % 200) + 3}.0/28", ip="192.168.1.9"))
                for i in range(5000)]
    assert len(m.records) == 50 and verdicts.count(Verdict.FULL) == 5000 - 48
    # a node speaking for itself still gets in (a hearsay entry makes room), the real one stays
    assert m.judge(rec("n3", "10.1.250.0/24", ip="192.168.1.3"), firsthand=True) == Verdict.CHANGED
    assert len(m.records) == 50 and {"self", "n2", "n3"} <= set(m.records)
    # withdrawn forged names: tombstones capped too, and they age out
    clock.t += 11
    m.expire()
    assert len(m.tombstones) <= 30
    clock.t += 31
    m.expire()
    assert len(m.tombstones) == 0


def test_lru_and_rate_limited_log_are_bounded(caplog):
    lru = LruDict(3)
    evicted = [lru.put(i, str(i)) for i in range(10)]
    assert list(lru) == [7, 8, 9] and evicted[3] == [(0, "0")]
    t = [0.0]
    say = RateLimitedLog(logging.getLogger("podnet.test.ratelimit"), interval=60, cap=100,
                         clock=lambda: t[0])
    with caplog.at_level(logging.WARNING, logger="podnet.test.ratelimit"):
        for i in range(10_000):
            say(logging.WARNING, ("forged", i % 7), "bad record %d", i)
        t[0] += 61
        say(logging.WARNING, ("forged", 0), "again")
        for i in range(1000):
            say(logging.WARNING, ("name", i), "many %d", i)
    assert [r.getMessage() for r in caplog.records][:8] == [f"bad record {i}" for i in range(7)] + ["again"]
    assert len(say.last) == 100


# -- the static store's receive path ---------------------------------------------------------

def static_store(name="self"):
    from podnetd.cluster.static import StaticStore
    cfg = ClusterConfig(cluster_cidr=CLUSTER, store="static", backend="auto", node_timeout=10.0,
                        listen="192.168.1.1:7946", peer_list=("192.168.1.2:7946",),
                        insecure_peers=True)
    changes = []
    store = StaticStore(cfg, LocalNode(name, "192.168.1.1", None, None),
                        lambda: changes.append(1))
    store._own = rec(name, "10.1.0.0/24", hb=records.now_ms(), started=records.now_ms() - 60_000)
    store.members.set_self(store._own)
    return store, changes


def n2_first_hand(store):
    n2 = rec("n2", "10.1.2.0/24", ip="192.168.1.2", hb=records.now_ms() - 1000,
             started=records.now_ms() - 30_000)
    assert store.receive([n2], "n2") is None
    store.contacted("n2")
    return n2


def test_a_record_sent_by_another_node_cannot_move_n2():
    store, _ = static_store()
    n2_first_hand(store)
    forged = rec("n2", "10.1.2.0/24", ip="192.168.1.66", hb=records.now_ms())
    assert store.receive([forged], "evil") is None
    assert store.receive([forged]) is None  # nor inside a peer's answer
    assert {r.name: r.underlay_ip for r in store.records()}["n2"] == "192.168.1.2"


def test_a_forged_older_claim_on_n2s_cidr_is_refused_not_n2():
    store, _ = static_store()
    n2_first_hand(store)
    forged = rec("evil", "10.1.2.0/24", ip="192.168.1.66", hb=records.now_ms(), started=1)
    refusal = store.receive([forged], "evil")
    assert refusal and "refuses evil" in refusal and "overlaps node n2's" in refusal
    assert set(conflicts(store.records(), CLUSTER)) == {"evil"}
    # relayed by a third node, the same
    assert store.receive([rec("evil2", "10.1.2.0/25", hb=records.now_ms(), started=1)], "n2") is None
    assert set(conflicts(store.records(), CLUSTER)) == {"evil", "evil2"}


def test_bad_records_are_dropped_one_by_one_and_the_good_ones_taken():
    store, changes = static_store()
    now = records.now_ms()
    batch = [rec("v6", "fd00::/64", hb=now), rec("badip", "10.1.5.0/24", ip="999.1.1.1", hb=now),
             rec("huge", "10.1.6.0/24", hb=2 ** 63 - 1), rec("neg", "10.1.7.0/24", hb=-1),
             rec("n3", "10.1.3.0/24", ip="192.168.1.3", hb=now),
             NodeRecord("x" * 300, "192.168.1.9", "10.1.8.0/24", "", now, "", 0),
             rec("ourip", "10.1.9.0/24", ip="192.168.1.1", hb=now),  # our own underlay address
             rec("n9", "10.1.10.0/24", ip="192.168.1.9", hb=now, mac=records.vtep_mac("n3"))]
    assert store.receive(batch, "n3") is None
    assert [r.name for r in store.records()] == ["n3", "self"]
    assert store.dropped == 7 and changes == [1]
    # what every other part does with the records still works
    assert conflicts(store.records(), CLUSTER) == {}


def test_one_refusing_peer_cannot_cut_off_a_node_the_others_accept():
    store, _ = static_store()
    assert store.refusal() is None
    store._refused_by = "node evil refuses self: lies"
    assert store.refusal() == "node evil refuses self: lies"  # nobody took us yet: refused
    import time
    store._accepted_at = time.monotonic()
    assert store.refusal() is None


def test_peer_state_is_pruned_to_known_nodes_and_capped():
    import asyncio

    from podnetd.cluster import static

    async def run():
        store, _ = static_store()
        for i in range(static.MAX_CHANNELS + 50):
            store._stub(f"192.168.{i // 250}.{i % 250 + 1}:7946")
            store._peer_errors.put(f"192.168.{i // 250}.{i % 250 + 1}:7946", "down")
        assert len(store._channels) == static.MAX_CHANNELS
        assert len(store._peer_errors) == static.MAX_CHANNELS
        store._announced_to.update({"192.168.9.9:1", "192.168.9.9:2"})
        store._prune()  # no node known: only the seed is wanted now
        assert set(store._channels) <= {"192.168.1.2:7946"}
        assert set(store._peer_errors) <= {"192.168.1.2:7946"}
        assert store._announced_to == set()
        await asyncio.gather(*store._closing)
    asyncio.run(run())


def test_claim_dates_survive_a_restart(tmp_path):
    from podnetd.cluster import static
    path = str(tmp_path / static.CLAIMS_FILE)
    m = joined_membership()
    m.merge(rec("n2", "10.1.2.0/24", started=NOW - 50_000), firsthand=True)
    static.save_claims(path, m.claims())
    # restarted: the first record it hears is a claim on n2's CIDR backdated to 1970
    again = Membership("self", timeout_s=10, clock=Clock(), wall=lambda: NOW + 99_000,
                       claims=static.load_claims(path))
    again.set_self(rec("self", "10.1.0.0/24"))
    again.merge(rec("evil", "10.1.2.0/24", started=1), firsthand=True)
    again.merge(rec("n2", "10.1.2.0/24", started=5), firsthand=True)
    assert again.records["n2"].started_ms == NOW and again.records["evil"].started_ms == NOW + 99_000
    assert set(conflicts(again.all(), CLUSTER)) == {"evil"}
    # an unreadable file is no history (dated anew, as a newcomer would)
    (tmp_path / "bad.json").write_text('{"n2": 5, "x": [1]}')
    assert static.load_claims(str(tmp_path / "bad.json")) == {}
    assert static.load_claims(str(tmp_path / "missing.json")) == {}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.builds(
    NodeRecord,
    name=st.one_of(st.sampled_from(["self", "n2", "n3", "evil"]), st.text(max_size=20)),
    underlay_ip=st.one_of(st.sampled_from(["192.168.1.2", "192.168.1.66", "192.168.1.1", "::1", "1.2.3"]),
                          st.text(max_size=10)),
    pod_cidr=st.one_of(st.sampled_from(["10.1.2.0/24", "10.1.0.0/25", "fd00::/64", "10.9.0.0/24",
                                        "10.1.2.0/31"]), st.text(max_size=10)),
    vtep_mac=st.one_of(st.just(""), st.sampled_from([records.vtep_mac("n2"), "ff:ff:ff:ff:ff:ff"]),
                       st.text(max_size=20)),
    heartbeat_ms=st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1),
    peer_address=st.one_of(st.just(""), st.sampled_from(["192.168.1.2:7946", "[::1]:1", ":"]),
                           st.text(max_size=12)),
    started_ms=st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1)), max_size=12),
    st.sampled_from(["", "n2", "evil"]))
def test_fuzz_the_store_takes_any_batch_without_raising(batch, sender):
    store, _ = static_store()
    store.contacted("n2")
    store.receive(batch, sender)
    from podnetd.cluster.static import to_pb
    for r in store.records():  # whatever it holds can be sent on (an int64 on the wire)
        to_pb(r)
        assert validate_record(r, cluster_cidr=CLUSTER) == r or r.name == "self"
    assert conflicts(store.records(), CLUSTER) is not None
    assert store.refusal() is None


def test_a_flood_of_bad_records_is_a_few_log_lines(caplog):
    store, _ = static_store()
    now = records.now_ms()
    with caplog.at_level(logging.WARNING, logger="podnetd.cluster.static"):
        for round_ in range(20):
            batch = [rec(f"forged{round_}-{i}", "fd00::/64", hb=now) for i in range(100)]
            batch += [rec(f"m{round_}-{i}", "10.1.9.0/24", ip="224.0.0.1", hb=now) for i in range(100)]
            store.receive(batch, "evil", via=f"evil (ipv4:192.168.1.66:{40000 + round_})")
            store.receive(batch, via=f"192.168.1.66:{7000 + round_ % 2}")  # as answers
    assert store.dropped == 20 * 2 * 200
    lines = [r.getMessage() for r in caplog.records]
    assert 2 <= len(lines) <= 6, lines  # per source and field, not per record or connection


def test_wire_times_round_trip_and_a_malformed_timestamp_is_refused():
    """On the wire (podnet.peer.v1) the times are Timestamps; records.py bounds them in ms."""
    from podnetd.api.podnet.peer.v1 import peer_pb2
    from podnetd.cluster.static import from_pb, to_pb
    r = rec("n2", "10.1.2.0/24", ip="192.168.1.2", hb=NOW + 1)
    message = peer_pb2.NodeRecord.FromString(to_pb(r).SerializeToString())
    assert message.heartbeat_time.ToMilliseconds() == NOW + 1
    assert from_pb(message) == r
    huge = records.to_wire(dataclasses.replace(r, heartbeat_ms=2 ** 63 - 1))["heartbeat_time"]
    assert records.wire_fields(peer_pb2.NodeRecord(heartbeat_time=huge))["heartbeat_ms"] == 2 ** 63 - 1
    message.heartbeat_time.nanos = -5  # no valid Timestamp has it
    with pytest.raises(RecordError, match="heartbeat_ms: -1 is not a time"):
        validate_record(records.wire_fields(message), cluster_cidr=CLUSTER, now=NOW)

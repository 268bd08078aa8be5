"""IPAM logic on a real SQLite file (no kernel)."""
import concurrent.futures

import pytest

from podnetd.ipam import Ipam, IpamError, PoolExhausted


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "ipam.db")


def test_round_robin_does_not_reuse_a_freed_address_at_once(db):
    ipam = Ipam(db, "10.9.0.0/29", "10.9.0.1")   # usable .2-.6
    a, _ = ipam.allocate("a", "eth0")
    b, _ = ipam.allocate("b", "eth0")
    assert (a.ip, b.ip) == ("10.9.0.2", "10.9.0.3")
    ipam.release("a", "eth0")
    c, _ = ipam.allocate("c", "eth0")
    assert c.ip == "10.9.0.4"
    d, _ = ipam.allocate("d", "eth0")
    e, _ = ipam.allocate("e", "eth0")
    assert (d.ip, e.ip) == ("10.9.0.5", "10.9.0.6")
    f, _ = ipam.allocate("f", "eth0")            # wraps around to the freed one
    assert f.ip == "10.9.0.2"
    with pytest.raises(PoolExhausted):
        ipam.allocate("g", "eth0")
    assert ipam.free_count() == 0


def test_same_key_gets_same_address_and_survives_reopen(db):
    ipam = Ipam(db, "10.9.0.0/24", "10.9.0.1")
    first, created = ipam.allocate("x", "eth0", netns="/proc/1/ns/net")
    again, created_again = ipam.allocate("x", "eth0")
    assert created and not created_again and first.address == again.address
    ipam.close()
    reopened = Ipam(db, "10.9.0.0/24", "10.9.0.1")
    assert reopened.get("x", "eth0").address == first.address
    nxt, _ = reopened.allocate("y", "eth0")
    assert nxt.ip == "10.9.0.3"                  # the round-robin cursor persisted too


def test_concurrent_allocations_are_unique(db):
    ipam = Ipam(db, "10.9.0.0/24", "10.9.0.1")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        records = list(pool.map(lambda i: ipam.allocate(f"c{i}", "eth0")[0], range(200)))
    assert len({r.ip for r in records}) == 200
    assert "10.9.0.1" not in {r.ip for r in records}


def test_changed_pod_cidr_with_live_records_is_refused(db):
    ipam = Ipam(db, "10.9.0.0/24", "10.9.0.1")
    ipam.allocate("x", "eth0")
    ipam.close()
    with pytest.raises(IpamError, match="pod CIDR changed"):
        Ipam(db, "10.10.0.0/24", "10.10.0.1")


def test_tiny_cidr_is_refused(db):
    with pytest.raises(IpamError, match="too small"):
        Ipam(db, "10.9.0.0/31", "10.9.0.1")

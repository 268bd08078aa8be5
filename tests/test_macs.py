"""Stable MACs: one derivation (podnetd.macs) for the bridge, the VTEP and the veth pair, with
the values podnet has always given them (a changed MAC would break neighbours' ARP entries and
the VTEP records other nodes hold)."""
import pytest
from hypothesis import given, settings, strategies as st

from podnetd import macs
from podnetd.cluster.records import vtep_mac
from podnetd.endpoints import veth_macs
from podnetd.node import bridge_mac


def test_the_three_devices_keep_their_macs():
    assert bridge_mac("n1") == "02:68:bf:85:61:68"
    assert vtep_mac("n1") == "02:1a:79:29:fd:c2"
    assert veth_macs("abc123", "eth0") == ("02:3d:c7:84:ae:6a", "0a:db:57:2e:d8:b6")


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_every_derived_mac_is_locally_administered_unicast_and_stable(a, b):
    host, pod = macs.stable_macs("mac", a, b, count=2)
    assert (host, pod) == veth_macs(a, b) and host != pod
    for mac in (host, pod, bridge_mac(a), vtep_mac(a)):
        octets = [int(x, 16) for x in mac.split(":")]
        assert len(octets) == 6 and octets[0] & 0b11 == 0b10  # local, unicast
    assert bridge_mac(a) != vtep_mac(a)


def test_a_third_mac_is_refused():
    with pytest.raises(ValueError, match="count 3"):
        macs.stable_macs("x", count=3)

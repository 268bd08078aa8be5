"""Stable MAC addresses derived from names (pure).

The node's bridge, its VXLAN device and each pod's veth pair get MACs computed from what they
belong to, so a re-created device keeps its MAC: neighbours' ARP entries and the cluster's FDB
records stay right, and nothing has to be read back from the kernel after creation.
"""
import hashlib

# Both locally administered unicast (bit 1 set, bit 0 clear); the second octet tells a veth's
# pod end (0a:) from its host end (02:) at a glance.
_FIRST_OCTETS = (0x02, 0x0A)


def stable_macs(*parts: str, count: int = 1) -> list[str]:
    """count MACs (at most 2) from sha256 of the parts joined by NUL: the first 02:xx:..., the
    second 0a:xx:..., each with its own 5 bytes of the digest."""
    if not 1 <= count <= len(_FIRST_OCTETS):
        raise ValueError(f"stable_macs: count {count} is not 1..{len(_FIRST_OCTETS)}")
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return [":".join(f"{b:02x}" for b in (_FIRST_OCTETS[i], *digest[5 * i:5 * i + 5]))
            for i in range(count)]


def stable_mac(*parts: str) -> str:
    """One MAC (02:xx:...) from the parts: stable_macs(*parts)[0]."""
    return stable_macs(*parts)[0]

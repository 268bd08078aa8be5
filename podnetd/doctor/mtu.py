"""Path MTU per peer from DF probes (pure): which sizes to send, and what the answers mean.

Sizes are IP total lengths. Round one sends the pod MTU and a coarse ladder below it at once;
round two fills in the gap between the largest size that came back and the next one that did
not, byte by byte, so the answer is exact after two round trips, never a binary search of
sequential timeouts.
"""
from .model import Check, Peer, failed, passed, skipped
from .replies import Reply

FAMILY = "mtu"
MIN_SIZE = 576            # every IPv4 path carries this much
COARSE_STEP = 32
VXLAN_OVERHEAD = 50       # outer Ethernet-less IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14


def coarse_sizes(pod_mtu: int) -> list[int]:
    """The pod MTU and every COARSE_STEP below it down to MIN_SIZE, largest first."""
    sizes = list(range(pod_mtu, MIN_SIZE - 1, -COARSE_STEP))
    if sizes[-1] != MIN_SIZE and pod_mtu > MIN_SIZE:
        sizes.append(MIN_SIZE)
    return sizes


def fine_sizes(largest_ok: int, smallest_lost: int) -> list[int]:
    """Every size strictly between the largest that passed and the smallest that did not."""
    return list(range(largest_ok + 1, smallest_lost))


def bounds(results: dict[int, Reply | None]) -> tuple[int | None, int | None]:
    """(largest size that came back, smallest size above it that did not)."""
    ok = [s for s, r in results.items() if r is not None and r.kind == "echo-reply"]
    largest = max(ok) if ok else None
    lost = [s for s in results if (largest is None or s > largest)
            and (results[s] is None or results[s].kind != "echo-reply")]
    return largest, (min(lost) if lost else None)


def frag_needed(results: dict[int, Reply | None]) -> Reply | None:
    for reply in results.values():
        if reply is not None and reply.kind == "frag-needed":
            return reply
    return None


def verdict(peer: Peer, pod_mtu: int, results: dict[int, Reply | None], reachable: bool) -> Check:
    name = "path MTU (DF probes)"
    if not reachable:
        return skipped(FAMILY, name, peer.name, "the pod path does not answer at all (see the peer checks)")
    largest, lost = bounds(results)
    if largest is None:
        return skipped(FAMILY, name, peer.name, f"no DF probe of {MIN_SIZE}..{pod_mtu} bytes came back")
    overhead = VXLAN_OVERHEAD if peer.mode == "vxlan" else 0
    what = f"largest packet that passes: {largest} bytes; pods use MTU {pod_mtu}"
    if largest >= pod_mtu:
        return passed(FAMILY, name, peer.name, what)
    told = frag_needed(results)
    if told is not None:
        what += (f"; {told.source} answered 'fragmentation needed, next-hop MTU "
                 f"{told.next_hop_mtu}' for larger ones")
        cause = (f"the path to {peer.name} is narrower than the pods' MTU; TCP recovers through "
                 "PMTU discovery, but every first large packet is lost and UDP above it fails")
    else:
        what += "; larger packets vanish without an ICMP error"
        underlay_needed = pod_mtu + overhead
        link = "the underlay" if not overhead else "the underlay (VXLAN adds 50 bytes)"
        cause = (f"an MTU black hole: a link on {link} to {peer.name} carries at most "
                 f"{largest + overhead} bytes but pods send {pod_mtu}"
                 + (f" (= {underlay_needed} on the wire)" if overhead else "")
                 + " and nothing reports the drop, so large transfers hang")
    fix = (f"raise that link's MTU to at least {pod_mtu + overhead}, or give the pods a smaller MTU "
           f"(podnetd --mtu {largest} on every node; pods get it when re-created)")
    return failed(FAMILY, name, peer.name, what, cause, fix)

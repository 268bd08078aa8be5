"""Egress masquerade and anti-spoofing, as two nftables tables podnetd owns.

- `inet podnet`: pod traffic leaving the cluster CIDR is masqueraded; pod-to-pod never is.
- `bridge podnet`: a frame entering the bridge from a pod port (host veths are named pn…)
  passes only with the port's own MAC and, for IPv4/ARP, the pod's own address; everything
  else from a pod port (other ethertypes, IPv6) is dropped. The allowed (port, MAC, IP)
  triples are set elements: attach adds one with one `nft` call, detach removes it, and the
  reconcile loop rewrites the whole table (atomically) from the IPAM records.
"""
import concurrent.futures
import logging
import re
import threading

from ..endpoints import HOST_VETH_PREFIX
from ..kernel import nft
from ..kernel.errors import KernelError, NotFound

log = logging.getLogger(__name__)

TABLE = "podnet"


def egress_body(pod_cidr: str, cluster_cidr: str) -> str:
    return (
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {cluster_cidr} ip daddr {cluster_cidr} return\n"
        f"    ip saddr {pod_cidr} ip daddr != {cluster_cidr} masquerade\n"
        "  }")


def element(port: str, mac: str, ip: str) -> str:
    return f'"{port}" . {mac.lower()} . {ip}'


def guard_body(elements: list[str]) -> str:
    elems = f"    elements = {{ {', '.join(elements)} }}\n" if elements else ""
    return (
        "  set pods {\n"
        "    type ifname . ether_addr . ipv4_addr\n"
        f"{elems}"
        "  }\n"
        "  chain prerouting {\n"
        "    type filter hook prerouting priority -200; policy accept;\n"
        f'    iifname "{HOST_VETH_PREFIX}*" jump from_pod\n'
        "  }\n"
        "  chain from_pod {\n"
        "    ether type ip iifname . ether saddr . ip saddr @pods accept\n"
        "    ether type arp iifname . ether saddr . arp saddr ip @pods "
        "iifname . arp saddr ether . arp saddr ip @pods accept\n"
        "    drop\n"
        "  }")


def record_element(record) -> str | None:
    if not (record.host_ifname and record.mac and record.address):
        return None
    return element(record.host_ifname, record.mac, record.address.split("/")[0])


_ELEMENTS = re.compile(r"\s*elements = \{[^}]*\}", re.S)
_ELEMENT = re.compile(r'"([^"]+)" \. ([0-9a-f:]{17}) \. ([0-9.]+)')


def listed_elements(listing: str) -> set[str]:
    """The (port, MAC, IP) elements in `nft list table bridge podnet` output."""
    return {element(port, mac, ip) for port, mac, ip in _ELEMENT.findall(listing)}


def structure(listing: str) -> str:
    """The listing without the set's elements: chains, rules, set type."""
    return _ELEMENTS.sub("", listing)


class Firewall:
    """Owns both tables. Attach and detach changes go through one worker thread in order
    (a detach's delete never overtakes a later attach's add for the same port); attach waits
    for its add (~0.3 ms with libnftables), detach does not wait (a delete costs ~15 ms, the
    kernel synchronises the set). The periodic sync rewrites a table only when its structure
    drifted; the set's elements are fixed one by one from the IPAM records."""

    def __init__(self, pod_cidr: str, cluster_cidr: str, records):
        self.pod_cidr = pod_cidr
        self.cluster_cidr = cluster_cidr
        self.records = records  # () -> IPAM records
        self._lock = threading.Lock()
        self._written: dict[str, str] = {}  # family -> structure as listed after our write
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="podnet-nft")

    def _current(self, family: str) -> str | None:
        try:
            return nft.list_table(family, TABLE)
        except NotFound:
            return None

    def _expected_elements(self) -> set[str]:
        return {e for r in self.records() if getattr(r, "state", "") != "releasing"
                for e in [record_element(r)] if e}

    def sync(self) -> dict:
        """Repair both tables; returns what was done (for logs and tests)."""
        done = {"rewritten": [], "added": 0, "removed": 0}
        with self._lock:
            current = self._current("inet")
            if current is None or structure(current) != self._written.get("inet"):
                nft.replace_table("inet", TABLE, egress_body(self.pod_cidr, self.cluster_cidr))
                self._written["inet"] = structure(nft.list_table("inet", TABLE))
                done["rewritten"].append("inet")
            expected = self._expected_elements()
            current = self._current("bridge")
            if current is None or structure(current) != self._written.get("bridge"):
                nft.replace_table("bridge", TABLE, guard_body(sorted(expected)))
                self._written["bridge"] = structure(nft.list_table("bridge", TABLE))
                done["rewritten"].append("bridge")
                return done
            have = listed_elements(current)
            nft.add_elements("bridge", TABLE, "pods", sorted(expected - have))
            nft.delete_elements("bridge", TABLE, "pods", sorted(have - expected))
            done["added"], done["removed"] = len(expected - have), len(have - expected)
        return done

    def _change(self, fn, elements) -> None:
        with self._lock:
            fn("bridge", TABLE, "pods", elements)

    def allow(self, record) -> None:
        e = record_element(record)
        if e:
            self._worker.submit(self._change, nft.add_elements, [e]).result()

    def forbid(self, record) -> None:
        e = record_element(record)
        if e:
            future = self._worker.submit(self._change, nft.delete_elements, [e])
            future.add_done_callback(_log_failure)

    def close(self) -> None:
        self._worker.shutdown(wait=True)


def _log_failure(future) -> None:
    if future.exception() is not None:
        log.warning("anti-spoofing: remove element: %s (the reconcile loop rewrites the set)",
                    future.exception())


def remove_tables() -> list[str]:
    errors = []
    for family in ("inet", "bridge"):
        try:
            nft.delete_table(family, TABLE)
        except KernelError as e:
            errors.append(str(e))
    return errors

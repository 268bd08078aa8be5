"""Pod attachment: the veth pair, the pod's address and routes, and their records.

Every multi-step change is built on an ExitStack so that a failure at any step undoes the
earlier ones in reverse: no half-made pod, no held address.
"""
import contextlib
import dataclasses
import hashlib
import logging
import os

from .ipam import Ipam, Record
from .kernel import ip_lib, netns
from .kernel.errors import Exists, KernelError, NamespaceGone

log = logging.getLogger(__name__)

HOST_VETH_PREFIX = "pn"


class AttachError(Exception):
    """Attach/detach/check failed; the message carries the context."""


class CheckFailed(AttachError):
    pass


class UnknownContainer(AttachError):
    pass


@dataclasses.dataclass(frozen=True)
class NodeNet:
    bridge: str
    gateway: str
    prefixlen: int
    mtu: int


def host_veth_name(container_id: str, ifname: str) -> str:
    """Deterministic host-side name: 'pn' + 11 hex digits of sha256(container id, ifname)."""
    digest = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()
    return HOST_VETH_PREFIX + digest[:11]


def _configure_pod_side(ifname: str, address: str, gateway: str) -> str:
    """Inside the pod netns: address, link up, lo up, default route. Returns the pod MAC."""
    ip_lib.addr_add(ifname, address)
    ip_lib.link_set(ifname, up=True)
    ip_lib.link_set("lo", up=True)
    ip_lib.route_replace("default", gateway=gateway, dev=ifname)
    link = ip_lib.link_get(ifname)
    return link["mac"] if link else ""


def _inspect_pod_side(ifname: str) -> dict:
    link = ip_lib.link_get(ifname)
    if link is None:
        return {"link": None}
    return {"link": link, "addrs": ip_lib.addrs(ifname), "routes": ip_lib.routes()}


class Endpoints:
    def __init__(self, node: NodeNet, ipam: Ipam):
        self.node = node
        self.ipam = ipam

    # -- attach ---------------------------------------------------------------------------

    def attach(self, container_id: str, ifname: str, netns_path: str, network: str = "") -> Record:
        what = f"attach {container_id[:12]}/{ifname}"
        host = host_veth_name(container_id, ifname)
        with contextlib.ExitStack() as undo:
            try:
                fd = netns.open_netns(netns_path)
            except NamespaceGone as e:
                raise UnknownContainer(f"{what}: {e}") from None
            undo.callback(os.close, fd)
            record, created = self.ipam.allocate(container_id, ifname, netns=netns_path,
                                                 network=network, host_ifname=host,
                                                 mtu=self.node.mtu)
            if created:
                undo.callback(self.ipam.release, container_id, ifname)
            # A repeated ADD (a runtime retrying) keeps the address and rebuilds the link.
            ip_lib.link_delete(host)
            bridge_index = ip_lib.link_index(self.node.bridge)
            if bridge_index is None:
                raise AttachError(f"{what}: bridge {self.node.bridge} is missing")
            try:
                host_link = ip_lib.veth_create(host, ifname, fd, mtu=self.node.mtu, master=bridge_index)
            except Exists as e:
                raise AttachError(f"{what}: {e}: an interface named {ifname} (or {host}) "
                                  f"already exists") from None
            except KernelError as e:
                raise AttachError(f"{what}: {e}") from None
            undo.callback(self._delete_quietly, host)
            try:
                mac = netns.run_in_netns(fd, _configure_pod_side, ifname, record.address,
                                         self.node.gateway)
            except KernelError as e:
                raise AttachError(f"{what}: configure {ifname} in {netns_path}: {e}") from None
            self.ipam.update(container_id, ifname, mac=mac, host_ifname=host, netns=netns_path)
            undo.pop_all()
            os.close(fd)
        return dataclasses.replace(record, mac=mac, host_ifname=host, netns=netns_path,
                                   host_mac=host_link["mac"])

    @staticmethod
    def _delete_quietly(name: str) -> None:
        try:
            ip_lib.link_delete(name)
        except KernelError as e:
            log.warning("rollback: delete %s: %s", name, e)

    # -- detach ---------------------------------------------------------------------------

    def detach(self, container_id: str, ifname: str, netns_path: str = "") -> Record | None:
        """Remove the pod's link and release its address. Idempotent: an unknown pod, a gone
        netns or no netns at all are fine."""
        record = self.ipam.get(container_id, ifname)
        host = record.host_ifname if record and record.host_ifname else host_veth_name(container_id, ifname)
        try:
            ip_lib.link_delete(host)  # the peer inside the pod goes with it
        except KernelError as e:
            raise AttachError(f"detach {container_id[:12]}/{ifname}: {e}") from None
        return self.ipam.release(container_id, ifname)

    # -- check ----------------------------------------------------------------------------

    def check(self, container_id: str, ifname: str, netns_path: str) -> Record:
        what = f"check {container_id[:12]}/{ifname}"
        record = self.ipam.get(container_id, ifname)
        if record is None:
            raise CheckFailed(f"{what}: no address is allocated to this attachment")
        host = ip_lib.link_get(record.host_ifname)
        if host is None:
            raise CheckFailed(f"{what}: host interface {record.host_ifname} is missing")
        bridge_index = ip_lib.link_index(self.node.bridge)
        if host["master"] != bridge_index:
            raise CheckFailed(f"{what}: {record.host_ifname} is not on bridge {self.node.bridge}")
        if not host["up"]:
            raise CheckFailed(f"{what}: {record.host_ifname} is down")
        try:
            seen = netns.run_in_netns(netns_path, _inspect_pod_side, ifname)
        except NamespaceGone as e:
            raise UnknownContainer(f"{what}: {e}") from None
        if seen["link"] is None:
            raise CheckFailed(f"{what}: {ifname} is missing in {netns_path}")
        if record.address not in seen["addrs"]:
            raise CheckFailed(f"{what}: {ifname} lacks {record.address} (has {seen['addrs']})")
        # The pod-side MTU is not checked: a later plugin of the chain (tuning) may set it, and
        # CHECK runs podnet first with that chain's result, as the reference bridge plugin does.
        if not any(r["dst"] == "default" and r["gateway"] == self.node.gateway for r in seen["routes"]):
            raise CheckFailed(f"{what}: no default route via {self.node.gateway} in {netns_path}")
        return record

    # -- garbage collection and reconcile ---------------------------------------------------

    def gc(self, valid: set[tuple[str, str]], network: str | None = None) -> list[Record]:
        released = []
        for record in self.ipam.records():
            if network and record.network and record.network != network:
                continue
            if (record.container_id, record.ifname) in valid:
                continue
            gone = self.detach(record.container_id, record.ifname)
            if gone:
                released.append(gone)
        return released

    def reconcile(self) -> dict:
        """Match records with the kernel after a start: release records whose host veth is gone
        (the pod's netns died, or a crash hit mid-attach) and delete our veths on the bridge
        that have no record (a crash mid-rollback). Returns counts for the log."""
        bridge_index = ip_lib.link_index(self.node.bridge)
        ours = {link["name"] for link in ip_lib.links(kind="veth")
                if link["name"].startswith(HOST_VETH_PREFIX)
                and (bridge_index is None or link["master"] in (bridge_index, 0))}
        recorded = set()
        released = 0
        for record in self.ipam.records():
            if record.host_ifname in ours:
                recorded.add(record.host_ifname)
            else:
                self.ipam.release(record.container_id, record.ifname)
                released += 1
        orphans = ours - recorded
        for name in orphans:
            self._delete_quietly(name)
        return {"released": released, "orphans_deleted": len(orphans), "kept": len(recorded)}

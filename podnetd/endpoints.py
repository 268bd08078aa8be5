"""Pod attachment: the veth pair, the pod's address and routes, and their records.

Every multi-step change is built on an ExitStack so that a failure at any step undoes the
earlier ones in reverse: no half-made pod, no held address.
"""
import contextlib
import dataclasses
import hashlib
import logging
import os
import queue
import threading

from .ipam import Ipam, Record
from .kernel import ip_lib, netns
from .kernel.errors import Exists, KernelError, NamespaceGone, NotFound
from .macs import stable_macs

log = logging.getLogger(__name__)

HOST_VETH_PREFIX = "pn"


class AttachError(Exception):
    """Attach/detach/check failed; the message carries the context."""


class CheckFailed(AttachError):
    pass


class UnknownContainer(AttachError):
    pass


class InvalidNetns(AttachError):
    """The netns path names something that is not a pod's network namespace."""


class InterfaceExists(AttachError):
    """The pod already has an interface by the requested name."""


@dataclasses.dataclass(frozen=True)
class NodeNet:
    bridge: str
    gateway: str
    prefixlen: int
    mtu: int
    # The pods' IPv4 GSO/GRO limit when it is above the kernel's 64 KiB default (BIG TCP on the
    # uplink), else None and the pods keep the default.
    gso_limit: int | None = None


def host_veth_name(container_id: str, ifname: str) -> str:
    """Deterministic host-side name: 'pn' + 11 hex digits of sha256(container id, ifname)."""
    digest = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()
    return HOST_VETH_PREFIX + digest[:11]


def veth_macs(container_id: str, ifname: str) -> tuple[str, str]:
    """Stable locally administered unicast MACs for (host end, pod end): a re-ADD keeps the pod's
    MAC, so its neighbours' ARP entries stay right, and nothing is read back after creation."""
    host, pod = stable_macs("mac", container_id, ifname, count=2)
    return host, pod


def _open_pod_netns(what: str, path: str) -> int:
    """The pod's netns, opened once (the fd is what every later step uses) and checked to be
    a network namespace that is not the node's own."""
    try:
        return netns.open_pod_netns(path)
    except NamespaceGone as e:
        raise UnknownContainer(f"{what}: {e}") from None
    except netns.InvalidNamespace as e:
        raise InvalidNetns(f"{what}: {e}") from None


def _inspect_pod_side(ifname: str) -> dict:
    link = ip_lib.link_get(ifname)
    if link is None:
        return {"link": None}
    return {"link": link, "addrs": ip_lib.addrs(ifname), "routes": ip_lib.routes()}


def netns_identity(path_or_fd: str | int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a network namespace: the same namespace whatever path names it."""
    try:
        st = os.fstat(path_or_fd) if isinstance(path_or_fd, int) else os.stat(path_or_fd)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


class VethReaper:
    """Deletes detached pods' veths in the background.

    Deleting a veth waits for RCU grace periods in the kernel (~15 ms here), which would be
    most of a DEL's latency. DEL marks the record "releasing" (committed), hands the veth to this
    thread and returns; the address stays taken until the veth is gone, and a crash in between
    is finished by the start-up reconcile. An ADD waits for a pending deletion of the same key,
    and of the same interface name in the same network namespace: a runtime may reuse a netns
    for a new container id as soon as DEL answered, and the old pod end still holds the name."""

    def __init__(self, ipam: Ipam):
        self.ipam = ipam
        self._queue: queue.Queue = queue.Queue()
        self._pending: dict[tuple[str, str], threading.Event] = {}
        self._in_netns: dict[tuple, threading.Event] = {}   # (netns identity, ifname)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="veth-reaper", daemon=True)
        self._thread.start()

    def submit(self, record: Record, netns_id: tuple[int, int] | None = None) -> None:
        key = (record.container_id, record.ifname)
        with self._lock:
            if key in self._pending:
                return
            done = self._pending[key] = threading.Event()
            if netns_id is not None:
                self._in_netns[(netns_id, record.ifname)] = done
        self._queue.put((record, netns_id))

    def wait(self, key: tuple[str, str], timeout: float = 30) -> None:
        with self._lock:
            done = self._pending.get(key)
        if done is not None:
            done.wait(timeout)

    def wait_netns(self, netns_id: tuple[int, int] | None, ifname: str,
                   timeout: float = 30) -> None:
        """Wait until no pending deletion holds `ifname` in that namespace."""
        if netns_id is None:
            return
        with self._lock:
            done = self._in_netns.get((netns_id, ifname))
        if done is not None:
            done.wait(timeout)

    def drain(self, timeout: float = 10) -> None:
        with self._lock:
            events = list(self._pending.values())
        for done in events:
            done.wait(timeout)

    def _run(self) -> None:
        while True:
            record, netns_id = self._queue.get()
            try:
                reap(self.ipam, record)
            except Exception as e:  # noqa: BLE001 - keep reaping; reconcile retries at start
                log.error("delete %s of %s/%s: %s", record.host_ifname, record.container_id[:12],
                          record.ifname, e)
            finally:
                with self._lock:
                    done = self._pending.pop((record.container_id, record.ifname), None)
                    if self._in_netns.get((netns_id, record.ifname)) is done:
                        self._in_netns.pop((netns_id, record.ifname), None)
                if done:
                    done.set()


def reap(ipam: Ipam, record: Record) -> None:
    """Delete a detached record's veth, then free its address."""
    ip_lib.link_delete(record.host_ifname)
    ipam.release(record.container_id, record.ifname)


class Endpoints:
    def __init__(self, node: NodeNet, ipam: Ipam):
        self.node = node
        self.ipam = ipam
        self.reaper = VethReaper(ipam)
        self._bridge_index: int | None = None
        self._bridge_gso_index: int | None = None  # the bridge whose GSO limit was raised
        # Features that keep per-pod state beside the veth (anti-spoofing) register here.
        # on_attach(record) runs inside attach's rollback scope: if it raises, the ADD fails and
        # everything is undone; on_detach(record) runs when a pod is detached, errors logged.
        self.attach_hooks: list = []
        self.detach_hooks: list = []

    # -- attach ---------------------------------------------------------------------------

    def attach(self, container_id: str, ifname: str, netns_path: str, network: str = "") -> Record:
        what = f"attach {container_id[:12]}/{ifname}"
        host = host_veth_name(container_id, ifname)
        with contextlib.ExitStack() as undo:
            fd = _open_pod_netns(what, netns_path)
            undo.callback(os.close, fd)
            self.reaper.wait_netns(netns_identity(fd), ifname)
            stale = self.ipam.get(container_id, ifname)
            if stale is not None and stale.state == "releasing":
                self.reaper.wait((container_id, ifname))
                if self.ipam.get(container_id, ifname) is not None:
                    reap(self.ipam, stale)
            host_mac, pod_mac = veth_macs(container_id, ifname)
            record, created = self.ipam.allocate(container_id, ifname, netns=netns_path,
                                                 network=network, host_ifname=host, mac=pod_mac,
                                                 mtu=self.node.mtu)
            if created:
                undo.callback(self.ipam.release, container_id, ifname)
            elif (record.netns, record.host_ifname, record.mac) != (netns_path, host, pod_mac):
                self.ipam.update(container_id, ifname, netns=netns_path, host_ifname=host, mac=pod_mac)
            # A repeated ADD (a runtime retrying) keeps the address and rebuilds the link.
            ip_lib.link_delete(host)
            try:
                self._create_veth(host, ifname, fd, host_mac, pod_mac)
            except Exists as e:
                raise InterfaceExists(f"{what}: {e}: an interface named {ifname} (or {host}) "
                                      f"already exists") from None
            except KernelError as e:
                raise AttachError(f"{what}: {e}") from None
            undo.callback(self._delete_quietly, host)
            try:
                netns.run_in_netns(fd, ip_lib.pod_interface_setup, ifname, record.address,
                                   self.node.gateway, self.node.gso_limit)
            except KernelError as e:
                raise AttachError(f"{what}: configure {ifname} in {netns_path}: {e}") from None
            attached = dataclasses.replace(record, mac=pod_mac, host_ifname=host, netns=netns_path,
                                           host_mac=host_mac)
            if self.attach_hooks:  # detach hooks are idempotent: they undo a partial run too
                undo.callback(self._run_detach_hooks, attached)
            for hook in self.attach_hooks:
                try:
                    hook(attached)
                except KernelError as e:
                    raise AttachError(f"{what}: {e}") from None
            undo.pop_all()
            os.close(fd)
        return attached

    def _create_veth(self, host: str, ifname: str, fd: int, host_mac: str, pod_mac: str) -> None:
        """Create the pair on the bridge, whose index is cached: it only changes when the
        bridge is re-created (drift repair), and then creation fails and the cache is renewed."""
        for attempt in (1, 2):
            if self._bridge_index is None:
                self._bridge_index = ip_lib.link_index(self.node.bridge)
                if self._bridge_index is None:
                    raise AttachError(f"bridge {self.node.bridge} is missing")
            try:
                ip_lib.veth_create(host, ifname, fd, mtu=self.node.mtu, master=self._bridge_index,
                                   host_mac=host_mac, peer_mac=pod_mac,
                                   gso_limit=self.node.gso_limit)
                break
            except (NotFound, KernelError) as e:
                if attempt == 2 or isinstance(e, Exists):
                    raise
                self._bridge_index = None
        if self.node.gso_limit and self._bridge_gso_index != self._bridge_index:
            self._raise_bridge_gso_limit()

    def _raise_bridge_gso_limit(self) -> None:
        """BIG TCP on the bridge too (pods' traffic from the uplink is routed into it), once per
        bridge: it takes the limit only now that it has a port. Best effort: a bridge that
        refuses (a port of its own cannot carry it) costs speed, not the pod."""
        try:
            ip_lib.link_set_gso_limit(self.node.bridge, self.node.gso_limit)
        except KernelError as e:
            log.warning("bridge %s keeps its GSO limit: %s: pods' inbound traffic is segmented "
                        "in software", self.node.bridge, e)
        self._bridge_gso_index = self._bridge_index

    @staticmethod
    def _delete_quietly(name: str) -> None:
        try:
            ip_lib.link_delete(name)
        except KernelError as e:
            log.warning("rollback: delete %s: %s", name, e)

    # -- detach ---------------------------------------------------------------------------

    def detach(self, container_id: str, ifname: str, netns_path: str = "") -> Record | None:
        """Detach the pod: its record turns "releasing" and its veth (the peer inside the pod
        goes with it) is deleted in the background, then the address is freed. Idempotent: an
        unknown pod, a gone netns or no netns at all are fine."""
        record = self.ipam.get(container_id, ifname)
        if record is None:
            try:  # no record, but a veth of ours may have outlived it
                ip_lib.link_delete(host_veth_name(container_id, ifname))
            except KernelError as e:
                raise AttachError(f"detach {container_id[:12]}/{ifname}: {e}") from None
            return None
        if record.state != "releasing":
            self.ipam.update(container_id, ifname, state="releasing")
        if not record.host_ifname:
            record = dataclasses.replace(record, host_ifname=host_veth_name(container_id, ifname))
        self._run_detach_hooks(record)
        self.reaper.submit(record, netns_identity(netns_path or record.netns))
        return record

    def _run_detach_hooks(self, record: Record) -> None:
        for hook in self.detach_hooks:
            try:
                hook(record)
            except KernelError as e:
                log.warning("detach %s/%s: %s", record.container_id[:12], record.ifname, e)

    # -- check ----------------------------------------------------------------------------

    def check(self, container_id: str, ifname: str, netns_path: str) -> Record:
        what = f"check {container_id[:12]}/{ifname}"
        record = self.ipam.get(container_id, ifname)
        if record is None or record.state != "active":
            raise CheckFailed(f"{what}: no address is allocated to this attachment")
        host = ip_lib.link_get(record.host_ifname)
        if host is None:
            raise CheckFailed(f"{what}: host interface {record.host_ifname} is missing")
        bridge_index = ip_lib.link_index(self.node.bridge)
        if host["master"] != bridge_index:
            raise CheckFailed(f"{what}: {record.host_ifname} is not on bridge {self.node.bridge}")
        if not host["up"]:
            raise CheckFailed(f"{what}: {record.host_ifname} is down")
        fd = _open_pod_netns(what, netns_path)
        try:
            seen = netns.run_in_netns(fd, _inspect_pod_side, ifname)
        finally:
            os.close(fd)
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
            if (record.container_id, record.ifname) in valid or record.state != "active":
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
            if record.state == "releasing":
                reap(self.ipam, record)
                released += 1
            elif record.host_ifname in ours:
                recorded.add(record.host_ifname)
            else:
                self.ipam.release(record.container_id, record.ifname)
                released += 1
        orphans = ours - recorded
        for name in orphans:
            self._delete_quietly(name)
        return {"released": released, "orphans_deleted": len(orphans), "kept": len(recorded)}

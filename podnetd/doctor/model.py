"""What a check reports, and the facts about peers the verdicts are made from (pure)."""
import dataclasses
import ipaddress

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclasses.dataclass
class Check:
    """One verdict: what was tested (family/name/target), the result, and for a failure the
    likely cause and what to do."""
    family: str          # "peer", "mtu", "drift", "vxlan", "node", "antispoof"
    name: str            # e.g. "underlay reachability"
    target: str          # the peer, device or entry tested ("" for the node as a whole)
    status: str          # PASS | FAIL | SKIP (not applicable, or needs what already failed)
    detail: str          # what was observed
    cause: str = ""
    fix: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def passed(family, name, target, detail) -> Check:
    return Check(family, name, target, PASS, detail)


def failed(family, name, target, detail, cause, fix) -> Check:
    return Check(family, name, target, FAIL, detail, cause, fix)


def skipped(family, name, target, detail) -> Check:
    return Check(family, name, target, SKIP, detail)


@dataclasses.dataclass(frozen=True)
class Peer:
    """A peer as ListNodes shows it."""
    name: str
    underlay_ip: str
    pod_cidr: str
    mode: str            # host-gw | vxlan | unreachable
    problem: str = ""
    vtep_mac: str = ""
    heartbeat_age: float = 0.0

    @property
    def gateway(self) -> str:
        """The peer's pod gateway: the first address of its pod CIDR (its bridge answers)."""
        return str(ipaddress.ip_network(self.pod_cidr, strict=False).network_address + 1)

    @property
    def vtep_ip(self) -> str:
        """Its VTEP address: the network address of its pod CIDR (as flannel does)."""
        return str(ipaddress.ip_network(self.pod_cidr, strict=False).network_address)


def exit_code(checks: list[Check]) -> int:
    """0 only when nothing failed."""
    return 1 if any(c.status == FAIL for c in checks) else 0


def summary(checks: list[Check]) -> dict:
    return {s.lower(): sum(c.status == s for c in checks) for s in (PASS, FAIL, SKIP)}

"""What came back for one probe (pure data; probe.py fills it in)."""
import dataclasses


@dataclasses.dataclass
class Reply:
    kind: str                  # "echo-reply" | "frag-needed" | "unreachable" | "timestamp" | "error"
    source: str = ""           # who answered
    rtt_ms: float = 0.0
    next_hop_mtu: int = 0      # frag-needed: the MTU the router reported
    code: int = 0              # unreachable: the ICMP code
    skew_ms: float | None = None   # timestamp: peer clock minus ours, at the midpoint
    error: str = ""            # error: why the probe could not even be sent

UNREACHABLE_CODES = {0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
                     3: "port unreachable", 4: "fragmentation needed", 9: "network prohibited",
                     10: "host prohibited", 13: "administratively prohibited"}


def describe(reply: "Reply | None", timeout: float) -> str:
    """One phrase for what happened to a probe."""
    if reply is None:
        return f"no answer within {timeout:g} s"
    if reply.kind == "echo-reply":
        return f"answered in {reply.rtt_ms:.1f} ms"
    if reply.kind == "frag-needed":
        return f"{reply.source} answered 'fragmentation needed, next-hop MTU {reply.next_hop_mtu}'"
    if reply.kind == "unreachable":
        return f"{reply.source} answered '{UNREACHABLE_CODES.get(reply.code, f'unreachable code {reply.code}')}'"
    if reply.kind == "error":
        return f"could not send: {reply.error}"
    return reply.kind

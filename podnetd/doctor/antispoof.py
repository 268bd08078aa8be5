"""Anti-spoofing self-test verdicts (pure).

The probe endpoint sends three echo requests to its gateway: one honest (its own MAC and IP),
one with a forged source IP and one with a forged source MAC. A capture on the bridge, which
sees only what passed the bridge's nftables hooks, must see the honest one (else the capture
proves nothing) and neither forgery.
"""
from .model import Check, failed, passed, skipped

FAMILY = "antispoof"


def verdicts(seen: dict[str, bool], table_present: bool, bridge: str, error: str = "") -> list[Check]:
    """seen: {"honest"|"forged-ip"|"forged-mac": did the bridge receive it}."""
    if error:
        return [skipped(FAMILY, "forged source dropped", "", f"self-test not run: {error}")]
    if not seen.get("honest"):
        return [failed(FAMILY, "self-test control", "",
                       f"the honest probe from the probe endpoint never reached {bridge}",
                       "the probe endpoint's own traffic is dropped: its (port, MAC, IP) element "
                       "is missing from the set `pods` of table bridge podnet, or the bridge port is down",
                       "`nft list set bridge podnet pods` should hold every attached pod; check "
                       "podnetd's log for firewall errors")]
    checks = []
    for kind, what in (("forged-ip", "a forged source IP"), ("forged-mac", "a forged source MAC")):
        name = f"{what} is dropped"
        if not seen.get(kind):
            checks.append(passed(FAMILY, name, "", f"a frame with {what} never reached {bridge}"))
            continue
        if not table_present:
            cause = ("table bridge podnet does not exist: podnetd runs without its anti-spoofing "
                     "firewall (a podnetd older than its firewall in every mode) or someone "
                     "flushed the ruleset")
            fix = ("let podnetd recreate the table (at its next reconcile, or restart it); "
                   "do not flush nftables behind its back")
        else:
            cause = ("table bridge podnet exists but let the frame through: its rules or set "
                     "were changed behind podnetd's back")
            fix = "podnetd rewrites the table at the next reconcile; `nft list table bridge podnet`"
        checks.append(failed(FAMILY, name, "", f"a frame with {what} reached {bridge}", cause, fix))
    return checks

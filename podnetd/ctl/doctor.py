"""podnetctl doctor: diagnose the fabric from this node (run it on the node, as root)."""
import signal
import sys

from ..doctor.model import FAIL, exit_code, summary
from . import output
from .client import CtlError


def _interrupt(signum, frame):
    # SIGTERM and SIGHUP unwind like Ctrl-C, so the probe endpoint is removed on the way out.
    raise KeyboardInterrupt


def render(report) -> str:
    rows = [{"family": c.family, "check": c.name, "target": c.target or "-", "status": c.status,
             "detail": c.detail} for c in report.checks]
    text = output.table(rows, [("FAMILY", "family"), ("CHECK", "check"), ("TARGET", "target"),
                               ("RESULT", "status"), ("DETAIL", "detail")])
    failures = [c for c in report.checks if c.status == FAIL]
    for c in failures:
        text += (f"\nFAIL {c.family}: {c.name}{' (' + c.target + ')' if c.target else ''}\n"
                 f"  seen:  {c.detail}\n  cause: {c.cause}\n  do:    {c.fix}\n")
    s = summary(report.checks)
    text += (f"\n{report.node}: {s['pass']} passed, {s['fail']} failed, {s['skip']} skipped "
             f"in {report.seconds:.1f} s\n")
    return text


def as_dict(report) -> dict:
    return {"node": report.node, "ok": exit_code(report.checks) == 0, "summary": summary(report.checks),
            "seconds": round(report.seconds, 3), "checks": [c.to_dict() for c in report.checks],
            "cleanup_errors": report.cleanup_errors}


def cmd_doctor(args) -> int:
    # scapy is imported only here: it costs ~0.5 s, which no other command should pay
    from ..doctor.run import diagnose
    if not 0 < args.timeout <= 30:  # also refuses nan
        raise CtlError(f"--timeout {args.timeout}: must be above 0 and at most 30 seconds")
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        report = diagnose(args.socket, timeout=args.timeout)
    except PermissionError as e:
        raise CtlError(f"doctor: needs root (raw sockets, namespaces): {e}") from None
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if args.output == "table":
        sys.stdout.write(render(report))
    else:
        output.emit([], [], args.output, raw=as_dict(report))
    for err in report.cleanup_errors:
        sys.stderr.write(f"podnetctl: doctor: cleanup: {err}\n")
    return exit_code(report.checks) or (1 if report.cleanup_errors else 0)


def register(sub, common) -> None:
    p = sub.add_parser("doctor", parents=[common],
                       help="diagnose the fabric from this node: peers, pod paths, MTU, VXLAN, "
                            "drift, the node, anti-spoofing (root; exit 0 only when all pass)")
    p.add_argument("--timeout", type=float, default=1.0,
                   help="seconds to wait for the answers of each probe round (default 1)")
    p.set_defaults(func=cmd_doctor)

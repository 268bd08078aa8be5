"""podnetd entry point."""
import asyncio
import logging
import os
import sys

# gRPC core logs every failed TLS handshake at INFO, one stderr line each: any host that reaches
# the peer port could fill the log. Read once when grpc is imported, so set before that.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from . import config
from .daemon import Daemon, StartupError
from .features import all_features
from .ipam import IpamError


def main(argv: list[str] | None = None) -> int:
    features = all_features()
    cfg = config.parse(argv, features)
    if getattr(cfg, "cleanup", False):
        from .cluster import cleanup
        return cleanup.run(cfg)
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(Daemon(cfg, features).run())
    except (StartupError, IpamError) as e:
        sys.stderr.write(f"podnetd: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

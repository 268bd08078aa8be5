"""podnetd entry point."""
import asyncio
import logging
import os
import sys

# gRPC core logs every failed TLS handshake at INFO, one stderr line each: any host that reaches
# the peer port could fill the log. Read once when grpc is imported, so set before that.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from . import config
from .cluster import cleanup
from .daemon import Daemon, StartupError
from .features import FEATURES
from .ipam import IpamError


def main(argv: list[str] | None = None) -> int:
    settings = config.parse(argv, FEATURES)
    request = settings.features.get("cluster")
    if isinstance(request, cleanup.CleanupRequest):  # `podnetd --cleanup`: no daemon
        return cleanup.run(request)
    logging.basicConfig(level=settings.daemon.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(Daemon(settings, FEATURES).run())
    except (StartupError, IpamError) as e:
        sys.stderr.write(f"podnetd: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

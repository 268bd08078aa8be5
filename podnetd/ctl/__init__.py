"""podnetctl: the CLI for people. Each module under podnetd/ctl registers its subcommands."""
import os

# gRPC's C core logs a failed TLS handshake on stderr on its own ("I1202 ... Handshake failed"),
# before podnetctl can say it in one line; a person sees podnetctl's line only. Set before grpc
# is first imported (the core reads it once); GRPC_VERBOSITY in the environment still wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

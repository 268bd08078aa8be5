"""Errors shared by the daemon and its features (kept apart so features need not import the
daemon module, which imports them)."""


class StartupError(Exception):
    """podnetd cannot start as configured: one line for the operator, exit code 1."""

import os

import pytest

from testlib import Daemon, Netns


def pytest_configure(config):
    if os.geteuid() != 0:
        raise pytest.UsageError("the podnet suite needs root (network namespaces, veth, runc)")


@pytest.fixture
def netns():
    """Factory of named network namespaces, all removed at the end of the test."""
    spaces = Netns()
    yield spaces
    spaces.cleanup()


@pytest.fixture
def daemons(netns):
    """Factory: daemons(pod_cidr=..., ...) starts a podnetd in a fresh node netns."""
    started: list[Daemon] = []

    def start(pod_cidr: str = "10.77.0.0/24", **kw) -> Daemon:
        node = kw.pop("netns", None) or netns.add("nd")
        d = Daemon(node, pod_cidr, **kw)
        started.append(d)
        return d.start()

    yield start
    for d in reversed(started):
        d.cleanup()


@pytest.fixture
def daemon(daemons):
    return daemons()

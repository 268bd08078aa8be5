import os
import shutil
import tempfile

import pytest

import testlib
from testlib import Daemon, Netns

_native_dir = tempfile.mkdtemp(prefix="pt-native-")


def pytest_configure(config):
    if os.geteuid() != 0:
        raise pytest.UsageError("the podnet suite needs root (network namespaces, veth, runc)")
    from podnetd.install import build_native
    testlib.PLUGIN_ARGV["native"] = [build_native(os.path.join(_native_dir, "podnet"))]
    testlib.PLUGIN_BUILD["current"] = "native"


def pytest_unconfigure(config):
    shutil.rmtree(_native_dir, ignore_errors=True)


@pytest.fixture(params=["native", "python"])
def plugin_build(request):
    """Run the test once with each build of the plugin."""
    before = testlib.PLUGIN_BUILD["current"]
    testlib.PLUGIN_BUILD["current"] = request.param
    yield request.param
    testlib.PLUGIN_BUILD["current"] = before


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

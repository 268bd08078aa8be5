"""The suite's two tiers: tests that need root (namespaces, veth, runc, a podnetd) carry the `root`
marker, set here; the rest is the unit tier, `make test-unit` (`pytest -m "not root"`), which runs
as any user in seconds. Root is checked, and the C plugin compiled, only when a root test runs."""
import os
import shutil
import tempfile

import pytest

import testlib
from testlib import Daemon, Netns

# Fixtures that create kernel state or start podnetd: a test that uses one, directly or through
# another fixture, is a root test.
ROOT_FIXTURES = frozenset({"netns", "daemons", "daemon", "plugin_build", "pod_ns", "lab"})
# Modules whose tests all need root although not every test reaches it through a fixture above
# (module-level labs, runtimes, nft tables, the installed reference plugins run for real).
ROOT_MODULES = frozenset({
    "test_big_tcp", "test_chaining", "test_ctl_cluster", "test_cluster_dataplane",
    "test_cluster_etcd",
    "test_cluster_overlap", "test_cluster_static", "test_cni_conformance", "test_cni_netns_reuse",
    "test_doctor", "test_firewall", "test_kernel", "test_lab_churn", "test_lab_cli",
    "test_lab_connectivity", "test_lab_etcd", "test_pod_isolation", "test_podman",
    "test_resilience", "test_single_node", "test_lab_hostile_peer",
    "test_runtime_cni_gc", "test_runtime_examples", "test_runtime_hostile",
    "test_runtime_image_attacks", "test_runtime_images", "test_runtime_lifecycle",
    "test_runtime_network", "test_runtime_paths", "test_runtime_pods", "test_runtime_podsec",
    "test_runtime_registry",
})


def pytest_collection_modifyitems(config, items):
    root = pytest.mark.root
    for item in items:
        module = item.module.__name__ if getattr(item, "module", None) else ""
        if module in ROOT_MODULES or ROOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(root)


def pytest_runtest_setup(item):
    if item.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, veth, runc); "
                    "run `make test` as root, or `make test-unit` for the tests that do not",
                    pytrace=False)


class _PluginArgv(dict):
    """testlib.PLUGIN_ARGV with the native build compiled on first use, once per session."""

    def __init__(self, initial: dict):
        super().__init__(initial)
        self.build_dir: str | None = None

    def __missing__(self, build: str) -> list[str]:
        if build != "native":
            raise KeyError(build)
        from podnetd.install import build_native
        self.build_dir = tempfile.mkdtemp(prefix="pt-native-")
        self[build] = [build_native(os.path.join(self.build_dir, "podnet"))]
        return self[build]


def pytest_configure(config):
    testlib.PLUGIN_ARGV = _PluginArgv(testlib.PLUGIN_ARGV)
    testlib.PLUGIN_BUILD["current"] = "native"


def pytest_unconfigure(config):
    if isinstance(testlib.PLUGIN_ARGV, _PluginArgv) and testlib.PLUGIN_ARGV.build_dir:
        shutil.rmtree(testlib.PLUGIN_ARGV.build_dir, ignore_errors=True)


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

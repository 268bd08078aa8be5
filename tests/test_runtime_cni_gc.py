"""CNI GC at runtime start: asked only of the plugins that support the configuration's version,
and said once which were not (Debian 12's portmap supports CNI up to 1.0.0)."""
import glob
import json
import time

from runtime_lib import RuntimeNode


def _wait_for_log(node, needle: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = node.daemon.log()
        if needle in log:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in the podnetd log:\n{node.daemon.log()[-3000:]}")


def test_gc_skips_a_plugin_without_the_configurations_version_and_says_so_once(netns):
    node = RuntimeNode(netns.add("gc"), "10.78.31.0/24")
    try:
        [path] = glob.glob(f"{node.conf_dir}/*.conflist")
        with open(path) as f:
            conf = json.load(f)
        assert [p["type"] for p in conf["plugins"]] == ["podnet", "portmap"]
        conf["cniVersion"] = "1.1.0"
        with open(path, "w") as f:
            json.dump(conf, f)
        node.start()
        log = _wait_for_log(node, "CNI GC done")
        skipped = [line for line in log.splitlines() if "CNI GC: not asked" in line]
        assert len(skipped) == 1 and "portmap (supports" in skipped[0], log
        assert "podnet (" not in skipped[0], log     # podnet speaks 1.1.0: it was asked
        assert "CNI GC (attempt" not in log, log
    finally:
        node.cleanup()

"""`make install`'s default network configuration (podnetd.install --cni-conf-dir): written with
the highest cniVersion every chained plugin answers to VERSION, never over a configuration of
podnet's or someone else's file, and working as written, as is the README's example. The plugins
asked are the real ones (the podnet build, Debian's reference portmap); only a temporary conf
dir is written, never /etc/cni/net.d."""
import json
import os
import re
import subprocess
import sys

import pytest

from cni_chain import REFERENCE_DIR, Chain, make_bin_dir
from podnetd import install
from testlib import REPO, assert_one_clear_line, cni_del, ns_path, ping, unique

PORTMAP = os.path.join(REFERENCE_DIR, "portmap")
needs_portmap = pytest.mark.skipif(not os.access(PORTMAP, os.X_OK),
                                   reason="the reference portmap plugin is not installed")


@pytest.mark.parametrize("supported, expected", [
    ({"podnet": ["0.3.1", "1.0.0", "1.1.0"], "portmap": ["0.3.1", "0.4.0", "1.0.0"]}, "1.0.0"),
    ({"podnet": ["0.3.1", "1.0.0", "1.1.0"]}, "1.1.0"),
    ({"a": ["0.4.0", "0.10.0"], "b": ["0.4.0", "0.10.0", "1.0.0"]}, "0.10.0"),   # not string order
    ({"a": ["1.0.0", "garbage", 7], "b": ["1.0.0"]}, "1.0.0"),
])
def test_highest_common_version(supported, expected):
    assert install.highest_common_version(supported) == expected


def test_no_common_version_names_every_plugin():
    with pytest.raises(install.ConflistError, match="podnet: 1.1.0; portmap: 0.4.0"):
        install.highest_common_version({"podnet": ["1.1.0"], "portmap": ["0.4.0"]})


@pytest.fixture
def dirs(tmp_path):
    """A CNI bin dir holding the portable podnet build (what VERSION answers is the same in
    both builds) and an empty conf dir."""
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    install.install_plugin(str(bin_dir))
    return str(bin_dir), str(conf_dir)


@needs_portmap
def test_the_default_conflist_takes_the_version_every_chained_plugin_supports(dirs):
    bin_dir, conf_dir = dirs
    path, written = install.install_conflist(conf_dir, bin_dir, [REFERENCE_DIR])
    assert written and path == os.path.join(conf_dir, "10-podnet.conflist")
    conflist = json.load(open(path))
    expected = install.highest_common_version({
        "podnet": install.plugin_versions(os.path.join(bin_dir, "podnet")),
        "portmap": install.plugin_versions(PORTMAP)})
    assert conflist["cniVersion"] == expected
    assert "1.1.0" not in install.plugin_versions(PORTMAP) or expected == "1.1.0"
    assert [p["type"] for p in conflist["plugins"]] == ["podnet", "portmap"]
    assert conflist["plugins"][0]["socket"] == "/run/podnet/cni.sock"
    # runtimes look for chained plugins in the bin dir: portmap is linked there
    assert os.path.realpath(os.path.join(bin_dir, "portmap")) == os.path.realpath(PORTMAP)
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"


def test_without_portmap_the_conflist_is_podnet_alone(dirs, tmp_path):
    bin_dir, conf_dir = dirs
    empty = tmp_path / "no-reference"
    empty.mkdir()
    path, written = install.install_conflist(conf_dir, bin_dir, [str(empty)])
    conflist = json.load(open(path))
    assert written and [p["type"] for p in conflist["plugins"]] == ["podnet"]
    assert conflist["cniVersion"] == max(install.plugin_versions(os.path.join(bin_dir, "podnet")),
                                         key=install.version_key)


def test_a_configuration_of_podnets_is_kept(dirs):
    bin_dir, conf_dir = dirs
    os.makedirs(conf_dir)
    mine = os.path.join(conf_dir, "50-mine.conflist")
    text = json.dumps({"cniVersion": "0.4.0", "name": "mine", "plugins": [{"type": "podnet"}]})
    open(mine, "w").write(text)
    assert install.install_conflist(conf_dir, bin_dir, []) == (mine, False)
    assert os.listdir(conf_dir) == ["50-mine.conflist"] and open(mine).read() == text


def test_a_foreign_file_with_our_name_is_not_overwritten(dirs):
    bin_dir, conf_dir = dirs
    os.makedirs(conf_dir)
    foreign = os.path.join(conf_dir, "10-podnet.conflist")
    open(foreign, "w").write('{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}]}')
    with pytest.raises(install.ConflistError, match="is not a podnet network configuration"):
        install.install_conflist(conf_dir, bin_dir, [])
    assert "bridge" in open(foreign).read()


@needs_portmap
def test_another_runtimes_conflist_does_not_stop_ours_and_sorts_after_it(dirs):
    """podman's 87-podman-bridge.conflist is what a runtime picked before ours existed."""
    bin_dir, conf_dir = dirs
    os.makedirs(conf_dir)
    open(os.path.join(conf_dir, "README"), "w").write("not a configuration")
    podman = {"cniVersion": "0.4.0", "name": "podman", "plugins": [{"type": "bridge"}]}
    open(os.path.join(conf_dir, "87-podman-bridge.conflist"), "w").write(json.dumps(podman))
    path, written = install.install_conflist(conf_dir, bin_dir, [REFERENCE_DIR])
    configs = sorted(n for n in os.listdir(conf_dir) if n.endswith(".conflist"))
    assert written and configs[0] == os.path.basename(path)


def test_install_cli_reports_a_bad_conf_dir_in_one_line(dirs, tmp_path):
    bin_dir, _ = dirs
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "podnetd.install", "--portable", "--cni-bin-dir",
                           bin_dir, "--cni-conf-dir", str(blocker / "net.d")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1
    assert_one_clear_line(proc.stderr, "net.d", prefix="podnetd.install: error: network configuration:")


# -- the conflists work as written, through a real chain -------------------------------------------

def readme_conflist() -> dict:
    text = (REPO / "README.md").read_text()
    block = re.search(r"Network configuration \(`/etc/cni/net.d/10-podnet.conflist`\):\s*"
                      r"```json\n(.*?)```", text, re.S)
    assert block, "the README's example conflist is not where this test looks for it"
    return json.loads(block.group(1))


def _run_chain(daemon, netns, conflist: dict, tmp_path) -> None:
    """ADD, a ping to the gateway, DEL through the conflist; only the relay socket is the test
    daemon's instead of /run/podnet/cni.sock."""
    assert conflist["plugins"][0]["socket"] == "/run/podnet/cni.sock"
    conflist["plugins"][0]["socket"] = daemon.cni_socket
    bin_dir = make_bin_dir(tmp_path / "bin", reference=[p["type"] for p in conflist["plugins"][1:]])
    chain = Chain(conflist, [bin_dir], runtime_netns=daemon.netns)
    pod, cid = netns.add("p"), unique("c")
    try:
        result = chain.add(cid, ns_path(pod), "eth0")
        assert result["cniVersion"] == conflist["cniVersion"]
        assert ping(pod, result["ips"][0]["gateway"])
        chain.delete(cid, ns_path(pod), "eth0")
    finally:
        cni_del(daemon, pod, cid, name=conflist["name"])


@pytest.mark.root
@needs_portmap
def test_the_readmes_conflist_works_as_written(daemon, netns, tmp_path):
    _run_chain(daemon, netns, readme_conflist(), tmp_path)


@pytest.mark.root
@needs_portmap
def test_the_installed_conflist_works(daemon, netns, tmp_path, dirs):
    bin_dir, conf_dir = dirs
    path, _ = install.install_conflist(conf_dir, bin_dir, [REFERENCE_DIR])
    _run_chain(daemon, netns, json.load(open(path)), tmp_path)

"""Prometheus metrics: names and labels as Prometheus' conventions want them, CNI operations
counted by the daemon, and a real Prometheus (Debian's) scraping every node of a lab."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse

import pytest

from podnetd import metrics
from podnetd.lab import Lab, pods
from podnetd.lab.probe import until
from testlib import PY, cni_add, in_ns, podnetctl, unique

PROMETHEUS = shutil.which("prometheus")


def test_cni_result_is_success_or_the_spec_error_code():
    assert metrics.cni_result(0, b'{"cniVersion":"1.0.0"}') == "success"
    assert metrics.cni_result(1, b'{"code": 7, "msg": "x"}') == "7"
    assert metrics.cni_result(1, b"not json") == "error"
    assert metrics.cni_result(1, b'["code", 7]') == "error"


@pytest.mark.parametrize("listen, ok", [("127.0.0.1:9633", True), ("[::1]:1", True),
                                        ("0.0.0.0:65535", True), ("9633", False),
                                        ("host:", False), (":80", False), ("h:0", False),
                                        ("h:70000", False), ("h:x", False)])
def test_listen_address_is_host_and_port(listen, ok):
    if ok:
        assert metrics.split_listen(listen)[1] > 0
    else:
        with pytest.raises(ValueError):
            metrics.split_listen(listen)


def _scrape(ns: str, url: str = "http://127.0.0.1:9633/metrics") -> str:
    code = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], " \
           "timeout=10).read().decode())"
    return in_ns(ns, PY, "-c", code, url).stdout


def _samples(text: str) -> dict[str, float]:
    """{'name{labels}': value} of an exposition text."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_names_units_and_labels_follow_prometheus_conventions(daemon):
    text = _scrape(daemon.netns)
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert families, text
    for name, kind in families:
        assert name.startswith("podnet_"), name
        assert not re.search(r"_(ms|milliseconds|kb|mb|percent)$", name), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        if kind == "counter":
            assert name.endswith("_total"), name
    for key in _samples(text):
        labels = set(re.findall(r'(\w+)="', key))
        assert not labels & {"ip", "address", "container_id", "pod", "netns", "mac"}, key


def test_cni_operations_and_ipam_are_counted(daemon, netns):
    spaces = [netns.add("m") for _ in range(3)]
    for i, ns in enumerate(spaces):
        rc, out, _ = cni_add(daemon, ns, f"met{i}")
        assert rc == 0, out
    rc, out, _ = cni_add(daemon, spaces[0], "met-bad", ifname="a/b")
    assert rc != 0 and isinstance(out, dict), out
    samples = _samples(_scrape(daemon.netns))
    assert samples['podnet_cni_operations_total{command="ADD",result="success"}'] == 3
    assert samples[f'podnet_cni_operations_total{{command="ADD",result="{out["code"]}"}}'] == 1
    assert samples['podnet_cni_operation_duration_seconds_count{command="ADD"}'] == 4
    assert samples["podnet_ipam_addresses_in_use"] == 3
    assert samples["podnet_ipam_pool_addresses"] == 253      # a /24 less network, gateway, broadcast
    assert samples['podnet_endpoints{state="active"}'] == 3


def _grpc_status_calls(daemon) -> float:
    """podnet_grpc_server_handled_total for the API's Status method with code OK (whatever the
    service is called)."""
    samples = _samples(_scrape(daemon.netns))
    return sum(v for k, v in samples.items() if k.startswith("podnet_grpc_server_handled_total{")
               and 'grpc_method="Status"' in k and 'grpc_code="OK"' in k)


def test_grpc_calls_are_counted(daemon):
    """The CNI relay is not gRPC (docs/cni-relay.md): the API's calls are what is counted."""
    before = _grpc_status_calls(daemon)
    for _ in range(2):
        proc = podnetctl("status", socket=daemon.socket)
        assert proc.returncode == 0, proc.stderr
    assert _grpc_status_calls(daemon) - before == 2


@pytest.fixture
def lab():
    lab = Lab.up(3, "l2", "static", name=unique("pm"), wait=30)
    try:
        assert lab.wait_routes(30) == {}, "nodes did not converge"
        yield lab
    finally:
        lab.down()


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed")
def test_a_real_prometheus_scrapes_every_lab_node(lab):
    nodes = lab.node_names()
    targets = [f"{lab.st.nodes[n]['ip']}:9633" for n in nodes]
    added = {"n1": 2, "n2": 1, "n3": 0}
    for node, count in added.items():
        for _ in range(count):
            pods.add_pod(lab, node)
    workdir = tempfile.mkdtemp(prefix=f"{unique('prom')}-")
    config = os.path.join(workdir, "prometheus.yml")
    with open(config, "w") as f:
        json.dump({"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                   "scrape_configs": [{"job_name": "podnetd",
                                       "static_configs": [{"targets": targets}]}]}, f)
    prom = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{lab.netns('n1')}", PROMETHEUS,
         f"--config.file={config}", f"--storage.tsdb.path={workdir}/data",
         "--web.listen-address=127.0.0.1:9090"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "log"), "wb"))
    try:
        def query(expr: str) -> dict:
            url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                answer = json.loads(_scrape(lab.netns("n1"), url))
            except (subprocess.CalledProcessError, ValueError):
                return {}
            return {r["metric"].get("instance"): float(r["value"][1])
                    for r in answer.get("data", {}).get("result", [])}

        up = until(lambda: (lambda r: r if len(r) == 3 and all(v == 1 for v in r.values())
                            else None)(query("up")), 60, "up == 1 for every node", 0.5)
        assert set(up) == set(targets)
        adds = 'sum by (instance) (podnet_cni_operations_total{command="ADD",result="success"})'
        expected = {f"{lab.st.nodes[n]['ip']}:9633": float(c) for n, c in added.items() if c}
        until(lambda: query(adds) == expected, 30, f"ADDs counted per node: {expected}", 0.5)
        peers = query('sum by (instance) (podnet_peers{state="ok"})')
        assert peers == {t: 2.0 for t in targets}, peers
        rounds = query("podnet_gossip_rounds_total")
        assert set(rounds) == set(targets) and all(v > 0 for v in rounds.values()), rounds
        age = query('podnet_store_last_sync_age_seconds{store="static"}')
        assert set(age) == set(targets) and all(0 <= v < 30 for v in age.values()), age
    finally:
        prom.terminate()
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        shutil.rmtree(workdir, ignore_errors=True)

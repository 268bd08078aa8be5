"""Every manifest in examples/ runs and does what its comment says."""
import pathlib

import pytest
import yaml

from runtime_lib import container, pod, runtime_node

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
GET = "printf 'GET /{path} HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 {port}"


@pytest.fixture(scope="module")
def node():
    with runtime_node("ex", "10.78.9.0/24") as n:
        yield n


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


def ready(p) -> bool:
    return all(c["ready"] for c in p["status"]["containerStatuses"])


def test_all_examples_are_covered():
    assert {p.stem for p in EXAMPLES.glob("*.yaml")} == {"init", "sidecar", "adapter", "ambassador"}


def test_init_example(node):
    doc = example("init")
    name = doc["metadata"]["name"]
    with node.running(doc):
        p = node.wait(name, ready, what="web ready (httpGet readiness)")
        assert p["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
        assert node.logs(name, "-c", "render").strip() == "rendered"
        page = node.exec(name, "sh", "-c", GET.format(path="index.html", port=8080)).stdout
        assert "rendered by the init container" in page


def test_sidecar_example(node):
    doc = example("sidecar")
    name = doc["metadata"]["name"]
    with node.running(doc):
        node.wait(name, lambda p: "request 2 served" in node.logs(name, "-c", "shipper"),
                  what="shipped log lines")
        p = node.get(name)
        assert p["status"]["initContainerStatuses"][0]["state"].get("running")


def test_adapter_example(node):
    doc = example("adapter")
    name = doc["metadata"]["name"]
    with node.running(doc):
        node.wait(name, ready, what="adapter ready")
        fetch = GET.format(path="metrics", port=9100)
        node.wait(name, lambda p: "app_requests" in node.exec(
            name, "sh", "-c", fetch, container="app", check=False).stdout, what="metrics")
        metrics = node.exec(name, "sh", "-c", fetch, container="app").stdout
        assert "app_errors 0" in metrics


def test_ambassador_example(node):
    remote = pod("remote", [container("svc", "exec nc -ll -p 7000 -e echo remote-says-hi")])
    doc = example("ambassador")
    name = doc["metadata"]["name"]
    with node.running(remote) as r:
        doc["spec"]["containers"][1]["env"][0]["value"] = r["status"]["podIP"]
        with node.running(doc):
            node.wait(name, lambda p: "app got: remote-says-hi" in node.logs(name, "-c", "app"),
                      what="the app reaching the remote service through localhost")

"""The Node a podnetd registers (podnetd/kubelet/node_object.py, facts.py): its conditions as
the kubelet writes them, and the pressure thresholds (the kubelet's default hard eviction)."""
from podnetd.apiserver import kinds
from podnetd.apiserver.validation import Errors
from podnetd.kubelet import facts, node_object
from podnetd.kubelet.node_object import NodeFacts

MI = 2**20


def make(**kw) -> NodeFacts:
    return NodeFacts(name="n1", internal_ip="10.0.0.1", pod_cidr="10.244.1.0/24", cpus=2,
                     memory_bytes=4096 * MI, os_image="Debian", kernel_version="6.1",
                     container_runtime="runc://1.1.5", **kw)


def test_pressure_thresholds_are_the_kubelets_defaults():
    gib, tb = 1024 * MI, 10**12
    assert node_object.pressures(2 * gib, tb, tb // 2, 1000, 500) == (False, False)
    assert node_object.pressures(99 * MI, tb, tb // 2, 1000, 500) == (True, False)
    assert node_object.pressures(100 * MI, tb, tb // 2, 1000, 500) == (False, False)
    assert node_object.pressures(gib, tb, tb // 10 - 1, 1000, 500) == (False, True)  # nodefs 10%
    assert node_object.pressures(gib, tb, tb // 2, 1000, 49) == (False, True)         # inodes 5%
    assert node_object.pressures(-1, 0, 0, 0, 0) == (False, False)   # unknown: no pressure


def test_node_conditions_in_the_kubelets_words_and_their_transitions():
    status = node_object.node_status(make(), True, "ready", None, 1000.0)
    cond = {c["type"]: c for c in status["conditions"]}
    assert [c["type"] for c in status["conditions"]] == ["MemoryPressure", "DiskPressure", "Ready"]
    assert (cond["MemoryPressure"]["status"], cond["MemoryPressure"]["reason"]) == \
        ("False", "KubeletHasSufficientMemory")
    assert cond["DiskPressure"]["message"] == "kubelet has no disk pressure"
    assert cond["Ready"]["reason"] == "KubeletReady"
    later = node_object.node_status(make(disk_pressure=True), True, "ready", status, 2000.0)
    cond2 = {c["type"]: c for c in later["conditions"]}
    assert (cond2["DiskPressure"]["status"], cond2["DiskPressure"]["reason"]) == \
        ("True", "KubeletHasDiskPressure")
    assert cond2["DiskPressure"]["lastTransitionTime"] != cond["DiskPressure"]["lastTransitionTime"]
    assert cond2["Ready"]["lastTransitionTime"] == cond["Ready"]["lastTransitionTime"]
    assert cond2["Ready"]["lastHeartbeatTime"] != cond["Ready"]["lastHeartbeatTime"]


def test_this_machine_is_read(tmp_path):
    assert facts.memory_available_bytes() > 0
    assert facts.pressures(str(tmp_path)) == node_object.pressures(
        facts.memory_available_bytes(), *_disk(str(tmp_path)))
    assert facts.pressures(str(tmp_path / "missing"))[1] is False   # unreadable: no pressure


def _disk(path: str):
    import os
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize, st.f_files, st.f_favail


def test_node_images_as_the_kubelet_reports_them():
    store = [{"name": "busybox:latest", "id": "a", "size": 5 * MI},
             {"name": "busybox:1.36", "id": "a", "size": 5 * MI},
             {"name": "10.0.0.1:5000/web:2", "id": "b", "size": 300 * MI},
             {"name": "team/tool:1", "id": "c", "size": 1}]
    images = node_object.node_images(store)
    assert images == (
        (("10.0.0.1:5000/web:2",), 300 * MI),
        (("busybox:1.36", "busybox:latest", "docker.io/library/busybox:1.36",
          "docker.io/library/busybox:latest"), 5 * MI),
        (("docker.io/team/tool:1", "team/tool:1"), 1))
    many = [{"name": f"i{n}:1", "id": str(n), "size": n} for n in range(80)]
    assert len(node_object.node_images(many)) == node_object.MAX_IMAGES
    status = node_object.node_status(make(images=images), True, "ready", None, 1000.0)
    assert status["images"][0] == {"names": ["10.0.0.1:5000/web:2"], "sizeBytes": 300 * MI}
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {},
            "status": status}
    e = Errors()
    kinds.BY_RESOURCE["nodes"].validate(node, e)
    assert not e, e.items


def test_hostile_node_images_are_refused():
    for images, want in (
            ("x", "status.images"),
            ([{"names": ["a"], "sizeBytes": -1}], "status.images[0].sizeBytes"),
            ([{"names": ["a" * 2000], "sizeBytes": 1}], "status.images[0].names[0]"),
            ([{"names": [""], "sizeBytes": 1, "extra": 1}], "status.images[0]"),
            ([{"names": ["a"], "sizeBytes": 1}] * 101, "status.images")):
        e = Errors()
        kinds.BY_RESOURCE["nodes"].validate(
            {"metadata": {"name": "n1"}, "spec": {}, "status": {"images": images}}, e)
        assert any(item.startswith(want) for item in e.items), (images, e.items)

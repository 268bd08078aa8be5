"""Pure logic of the lab: the address plan, the state record, process identity, the matrix."""
import os
import subprocess

import pytest

from podnetd.lab import plan, procs, probe, state


def test_l2_plan_puts_every_node_on_one_segment():
    nodes = [plan.plan_node("x", "l2", "static", i + 1, s)
             for i, s in enumerate(plan.initial_segments(3, "l2"))]
    assert [(n.name, n.netns, n.ip, n.pod_cidr) for n in nodes] == [
        ("n1", "x-n1", "10.250.0.11", "10.244.1.0/24"),
        ("n2", "x-n2", "10.250.0.12", "10.244.2.0/24"),
        ("n3", "x-n3", "10.250.0.13", "10.244.3.0/24")]
    assert plan.etcd_address("x", "l2") == "10.250.0.2"


def test_routed_plan_splits_nodes_across_the_router():
    assert plan.initial_segments(3, "routed") == ["a", "a", "b"]
    assert plan.initial_segments(4, "routed") == ["a", "a", "b", "b"]
    assert plan.join_segment(["a", "a", "b"], "routed") == "b"
    assert plan.join_segment(["a", "b"], "routed") == "b"
    assert plan.join_segment(["a", "b", "b"], "routed") == "a"
    n3 = plan.plan_node("x", "routed", "etcd", 3, "b")
    assert (n3.ip, n3.pod_cidr) == ("10.250.2.13", None)
    assert [s.gateway for s in plan.segments("x", "routed")] == ["10.250.1.1", "10.250.2.1"]


@pytest.mark.parametrize("bad", ["", "a/b", "-x", "x" * 25, "a b"])
def test_bad_lab_names_are_refused(bad):
    with pytest.raises(plan.PlanError):
        plan.validate_name(bad)


def test_bad_topology_and_index_are_refused():
    with pytest.raises(plan.PlanError, match="topology"):
        plan.segments("x", "mesh")
    with pytest.raises(plan.PlanError, match="index"):
        plan.plan_node("x", "l2", "static", 0, "a")


def test_state_round_trip_and_double_create(tmp_path):
    st = state.LabState(name="t", topology="l2", store="static", root=str(tmp_path))
    state.create(st)
    st.namespaces.append("t-ul")
    st.processes["podnetd/n1"] = {"pid": 1, "start": 2, "argv": [], "log": ""}
    st.save()
    again = state.load("t", str(tmp_path))
    assert again.namespaces == ["t-ul"] and again.processes["podnetd/n1"]["pid"] == 1
    assert state.names(str(tmp_path)) == ["t"]
    with pytest.raises(state.StateError, match="already exists"):
        state.create(state.LabState(name="t", topology="l2", store="static", root=str(tmp_path)))
    with pytest.raises(state.StateError, match="no lab named"):
        state.load("nope", str(tmp_path))
    with state.locked("t", str(tmp_path)), state.locked("t", str(tmp_path)):  # re-entrant
        pass
    state.remove_dir("t", str(tmp_path))
    assert state.names(str(tmp_path)) == []


def test_a_recycled_pid_is_never_signalled(tmp_path):
    record = procs.spawn(["sleep", "30"], str(tmp_path / "log"))
    assert procs.alive(record)
    impostor = dict(record, start=record["start"] + 1)  # same PID, another process's start time
    assert not procs.alive(impostor)
    procs.stop(impostor)
    assert procs.alive(record)
    procs.stop(record)
    assert not procs.alive(record)


def test_matrix_table_marks_failures():
    pods = {"n1/p1": {"address": "10.244.1.2"}, "n2/p1": {"address": "10.244.2.2"}}
    text = probe.render_matrix(pods, {("n1/p1", "n2/p1"): True, ("n2/p1", "n1/p1"): False})
    lines = text.splitlines()
    assert lines[0].split() == ["from", "\\", "to", "n1/p1", "n2/p1"]
    assert lines[1].split()[-2:] == ["-", "ok"] and lines[2].split()[-2:] == ["FAIL", "-"]

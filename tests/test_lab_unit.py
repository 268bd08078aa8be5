"""Pure logic of the lab: the address plan, the state record, process identity, the matrix."""
import sys

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
    assert plan.registry_address("x", "l2") == "10.250.0.3"
    assert plan.registry_address("x", "routed") == "10.250.1.3"   # segment A, as etcd


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


def test_daemon_argv_static_mtls_and_etcd_leased(tmp_path):
    from podnetd.lab.lab import Lab
    from podnetd.lab.state import LabState

    def argv(store, tls=True):
        st = LabState(name="x", topology="routed", store=store, root=str(tmp_path),
                      options={"tls": tls, "node_timeout": 3, "backend": None})
        for i, seg in ((1, "a"), (2, "b")):
            p = plan.plan_node("x", "routed", store, i, seg)
            st.nodes[p.name] = {"index": i, "netns": p.netns, "segment": seg, "ip": p.ip,
                                "pod_cidr": p.pod_cidr, "dir": f"/d/{p.name}",
                                "socket": f"/d/{p.name}/podnetd.sock"}
        args = Lab(st).daemon_argv("n1", ["n2"])
        assert args[2:5] == [sys.executable, "-m", "podnetd.main"], args
        if not tls and store == "static":  # a flag without a value, said explicitly
            assert args[-1] == "--insecure-peers", args
            args = args[:-1]
        assert "--insecure-peers" not in args
        return args[:2], dict(zip(args[5::2], args[6::2]))

    enter, flags = argv("static")
    assert enter == ["nsenter", "--net=/run/netns/x-n1"]
    assert flags["--pod-cidr"] == "10.244.1.0/24" and flags["--node-ip"] == "10.250.1.11"
    assert flags["--listen"] == "10.250.1.11:7470" and flags["--peers"] == "10.250.2.12:7470"
    assert flags["--tls-ca"] == str(tmp_path / "x" / "ca" / "ca.crt")
    assert flags["--tls-cert"] == "/d/n1/tls/node.crt" and flags["--node-timeout"] == "3"
    assert "--backend" not in flags
    _, flags = argv("static", tls=False)
    assert "--tls-cert" not in flags and flags["--peers"] == "10.250.2.12:7470"
    _, flags = argv("etcd")
    assert "--pod-cidr" not in flags and "--peers" not in flags
    # ... and serves the cluster API on the node's address with its certificate, users' client
    # certificates from the lab CA, an audit log in the node's dir
    assert flags["--api-listen"] == "10.250.1.11:6443" and flags["--tls-cert"] == "/d/n1/tls/node.crt"
    assert flags["--client-ca"] == str(tmp_path / "x" / "ca" / "ca.crt")
    assert flags["--audit-log"] == "/d/n1/audit.log"
    assert flags["--node-labels"] == "lab.podnet.io/segment=a"
    assert flags["--cni-conf-dir"] == "/d/n1/cni/net.d"
    # a TLS lab runs etcd with client-certificate auth: each node brings its lab certificate
    assert flags["--etcd-endpoints"] == "https://10.250.1.2:2379"
    assert flags["--etcd-cafile"] == str(tmp_path / "x" / "ca" / "ca.crt")
    assert flags["--etcd-certfile"] == "/d/n1/tls/node.crt" and flags["--etcd-keyfile"] == "/d/n1/tls/node.key"


def test_lab_up_extra_args_split_as_a_shell_would():
    import argparse
    from podnetd.ctl.lab import extra_args
    assert extra_args('--log-level debug --node-labels "a=b,c=d"') == \
        ["--log-level", "debug", "--node-labels", "a=b,c=d"]
    assert extra_args("") == []
    for bad in ('--log-level "debug', "debug --log-level"):
        with pytest.raises(argparse.ArgumentTypeError):
            extra_args(bad)

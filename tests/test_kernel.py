"""The kernel layer: one errno map (errors.translated) for every call, pyroute2 as the one netlink
transport (rtnl.LinkMessage names BIG TCP's attributes), one way to read a link."""
import errno
import json
import os
import sys

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_SETLINK

from podnetd.kernel import errors, ip_lib, rtnl, vxlan
from podnetd.kernel import netns as kernel_netns
from testlib import REPO, in_ns, ns_path, unique

BIG = 3 * 65536

big_tcp_kernel = pytest.mark.skipif(
    tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit()) < (6, 3),
    reason="IPv4 BIG TCP (gso_ipv4_max_size) needs Linux 6.3")


def run(ns: str, fn, *args, **kwargs):
    return kernel_netns.run_in_netns(ns_path(ns), fn, *args, **kwargs)


def veth(netns) -> tuple[str, str, str]:
    ns = netns.add("k")
    a, b = unique("a"), unique("b")
    in_ns(ns, "ip", "link", "add", a, "type", "veth", "peer", "name", b)
    return ns, a, b


def iproute2_link(ns: str, name: str) -> dict:
    """The link as iproute2 reads it: an independent decoder to check ours against (Debian 12's
    iproute2 6.1 predates the IPv4 GSO/GRO limits, but knows their older neighbours)."""
    (link,) = json.loads(in_ns(ns, "ip", "-d", "-j", "link", "show", "dev", name).stdout)
    return link


# -- the errno map (pure) -------------------------------------------------------------------

@pytest.mark.parametrize("code, kind", [
    (errno.ENODEV, errors.NotFound), (errno.ENOENT, errors.NotFound),
    (errno.ESRCH, errors.NotFound), (errno.EADDRNOTAVAIL, errors.NotFound),
    (errno.ENXIO, errors.NotFound), (errno.EEXIST, errors.Exists),
    (errno.EPERM, errors.KernelError), (errno.EBUSY, errors.KernelError),
    (errno.EINVAL, errors.KernelError), (errno.EOPNOTSUPP, errors.KernelError),
])
@pytest.mark.parametrize("raised", [NetlinkError, OSError])
def test_translated_maps_errno_to_one_exception_with_what(code, kind, raised):
    with pytest.raises(errors.KernelError) as caught:
        with errors.translated("set pt0 mtu 9000"):
            raise raised(code, "kernel text")
    assert type(caught.value) is kind
    assert caught.value.code == code
    assert str(caught.value).startswith(f"set pt0 mtu 9000: {errno.errorcode[code]} (")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_translated_leaves_other_errors_alone():
    with pytest.raises(ValueError, match="not an errno"):
        with errors.translated("x"):
            raise ValueError("not an errno")
    with pytest.raises(OSError) as caught:
        with errors.translated("x"):
            raise OSError("no errno at all")
    assert not isinstance(caught.value, errors.KernelError)


# -- the errno map on real kernel answers ---------------------------------------------------

def test_a_missing_link_is_not_found_with_its_name(netns):
    ns = netns.add("k")
    name = unique("x")
    for call in (lambda: ip_lib.link_require(name), lambda: ip_lib.link_set(name, up=True),
                 lambda: ip_lib.link_gso_limit(name), lambda: ip_lib.addrs(name),
                 lambda: vxlan.neigh_replace(name, "10.9.0.1", "02:00:00:00:00:01"),
                 lambda: vxlan.fdb_replace(name, "02:00:00:00:00:01", "10.9.0.1")):
        with pytest.raises(errors.NotFound, match=name):
            run(ns, call)
    assert run(ns, ip_lib.link_get, name) is None
    assert run(ns, ip_lib.link_delete, name) is False
    assert run(ns, vxlan.neigh_delete, name, "10.9.0.1") is False
    assert run(ns, vxlan.fdb_delete, name, "02:00:00:00:00:01", "10.9.0.1") is False


def test_an_existing_object_is_exists_with_its_name(netns):
    ns, a, b = veth(netns)
    fd = kernel_netns.open_netns(ns_path(ns))
    try:
        with pytest.raises(errors.Exists, match=f"create veth {a}"):
            run(ns, ip_lib.veth_create, a, unique("c"), fd, mtu=1500, master=0,
                host_mac="02:00:00:00:00:01", peer_mac="02:00:00:00:00:02")
    finally:
        os.close(fd)
    with pytest.raises(errors.Exists, match=f"create bridge {a}: a link of kind veth"):
        run(ns, ip_lib.bridge_ensure, a, mtu=1500, mac="02:00:00:00:00:03")
    run(ns, ip_lib.link_set, a, up=True)
    run(ns, ip_lib.addr_add, a, "10.9.0.2/24")
    run(ns, ip_lib.route_add, "10.9.9.0/24", gateway="10.9.0.1", dev=a, proto=77)
    with pytest.raises(errors.Exists, match=f"add route 10.9.9.0/24 via 10.9.0.1 dev {a}"):
        run(ns, ip_lib.route_add, "10.9.9.0/24", gateway="10.9.0.1", dev=a, proto=77)


def test_a_refused_change_is_a_kernel_error_with_what_and_errno(netns):
    ns, a, _ = veth(netns)
    with pytest.raises(errors.KernelError, match=f"set {a} mtu 1000000: EINVAL") as caught:
        run(ns, ip_lib.link_set, a, mtu=1_000_000)
    assert type(caught.value) is errors.KernelError


def test_a_forbidden_change_is_a_kernel_error_with_eperm(netns):
    """A user namespace of its own has no CAP_NET_ADMIN over the test's netns: a real EPERM."""
    ns = netns.add("k")
    probe = ("from podnetd.kernel import errors, ip_lib\n"
             "try:\n"
             "    ip_lib.link_set('lo', up=True)\n"
             "except errors.KernelError as e:\n"
             "    print(type(e).__name__, e)\n")
    out = in_ns(ns, "unshare", "--user", "--map-root-user", sys.executable, "-c", probe,
                cwd=REPO).stdout.strip()
    assert out == "KernelError set lo up: EPERM (Operation not permitted)"


def test_a_batch_names_the_request_that_failed_and_the_socket_stays_usable(netns):
    ns, a, _ = veth(netns)

    def setup_then_read():
        # The fourth request of the batch fails: no route to a gateway outside the subnet.
        with pytest.raises(errors.KernelError, match=f"add default route via 10.8.0.1 dev {a}: "
                                                     "ENETUNREACH"):
            ip_lib.pod_interface_setup(a, "10.9.0.2/24", "10.8.0.1")
        return ip_lib.link_require(a), ip_lib.addrs(a)  # the same thread's socket, afterwards
    link, addrs = run(ns, setup_then_read)
    assert link["up"] and addrs == ["10.9.0.2/24"]  # the requests before it took effect


# -- BIG TCP's attributes through pyroute2 --------------------------------------------------

def test_link_message_names_the_big_tcp_attributes_by_their_kernel_numbers():
    numbers = {name: i for i, (name, *_) in enumerate(rtnl.LinkMessage.nla_map)}
    assert numbers["IFLA_GSO_IPV4_MAX_SIZE"] == 63 and numbers["IFLA_GRO_IPV4_MAX_SIZE"] == 64
    msg = rtnl.LinkMessage()
    msg["attrs"] = [("IFLA_IFNAME", "pt0"), ("IFLA_GSO_IPV4_MAX_SIZE", BIG),
                    ("IFLA_GRO_IPV4_MAX_SIZE", BIG + 1)]
    msg["header"]["type"] = RTM_SETLINK
    msg.encode()
    back = rtnl.LinkMessage(msg.data)
    back.decode()
    assert (back.get_attr("IFLA_GSO_IPV4_MAX_SIZE"), back.get_attr("IFLA_GRO_IPV4_MAX_SIZE")) == (
        BIG, BIG + 1)


@big_tcp_kernel
def test_gso_and_gro_limits_set_and_read_back_through_pyroute2(netns):
    ns, a, b = veth(netns)
    assert run(ns, ip_lib.link_require, a)["gso_ipv4_max_size"] == ip_lib.LEGACY_GSO_MAX_SIZE
    run(ns, ip_lib.link_set, a, gso_limit=BIG)
    # Read back three ways: our GETLINK, IPRoute's dump (the same LinkMessage registered in its
    # marshal), and iproute2's own decoder for both attributes.
    assert run(ns, ip_lib.link_require, a)["gso_ipv4_max_size"] == BIG
    dumped = {link["name"]: link for link in run(ns, ip_lib.links)}
    assert dumped[a]["gso_ipv4_max_size"] == BIG
    assert dumped[b]["gso_ipv4_max_size"] == ip_lib.LEGACY_GSO_MAX_SIZE
    assert run(ns, ipv4_limits, a) == (BIG, BIG)
    # The IPv4 limits are their own attributes, not gso_max_size/gro_max_size (41 and 58).
    seen = iproute2_link(ns, a)
    assert (seen["gso_max_size"], seen["gro_max_size"]) == (65536, 65536)


def ipv4_limits(name: str) -> tuple[int, int]:
    """(GSO, GRO) IPv4 limits from a plain GETLINK decoded as rtnl.LinkMessage."""
    request = rtnl.LinkMessage()
    request["attrs"] = [("IFLA_IFNAME", name)]
    ((msg,),) = rtnl.transact([rtnl.Request(request, RTM_GETLINK, rtnl.REQUEST, f"get {name}")])
    return msg.get_attr("IFLA_GSO_IPV4_MAX_SIZE"), msg.get_attr("IFLA_GRO_IPV4_MAX_SIZE")


@big_tcp_kernel
def test_a_pod_interface_gets_its_gso_limit_in_the_same_batch(netns):
    ns, a, _ = veth(netns)
    index = run(ns, ip_lib.pod_interface_setup, a, "10.9.0.2/24", "10.9.0.1", BIG)
    link = run(ns, ip_lib.link_require, a)
    assert (link["index"], link["up"]) == (index, True)
    assert run(ns, ipv4_limits, a) == (BIG, BIG)
    assert run(ns, ip_lib.addrs, a) == ["10.9.0.2/24"]
    assert [r["gateway"] for r in run(ns, ip_lib.routes) if r["dst"] == "default"] == ["10.9.0.1"]


# -- one way to read a link ----------------------------------------------------------------

def test_vxlan_facts_come_from_the_same_link_read(netns):
    ns, a, _ = veth(netns)
    run(ns, ip_lib.addr_add, a, "10.9.0.2/24")
    name = unique("v")
    index = run(ns, vxlan.vxlan_ensure, name, vni=4242, port=8472, local="10.9.0.2",
                mac="02:00:00:00:42:42", mtu=1450)
    link = run(ns, vxlan.vxlan_get, name)
    plain = run(ns, ip_lib.link_get, name)
    assert (link["index"], link["kind"], link["vni"], link["port"], link["local"], link["learning"],
            link["mac"], link["mtu"], link["up"]) == (
        index, "vxlan", 4242, 8472, "10.9.0.2", False, "02:00:00:00:42:42", 1450, True)
    assert {k: plain[k] for k in plain if k != "operstate"} == {
        k: link[k] for k in plain if k != "operstate"}
    seen = iproute2_link(ns, name)["linkinfo"]["info_data"]
    assert (seen["id"], seen["port"], seen["local"]) == (4242, 8472, "10.9.0.2")

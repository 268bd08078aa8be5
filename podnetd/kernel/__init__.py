"""The network's OS layer: netlink (ip_lib, vxlan, through pyroute2; rtnl), sysctl, nftables
(nft) and entering network namespaces (netns).

Flat functions taking and returning plain values. Each is idempotent where the kernel says
"exists" or "not found", and raises errors.KernelError / NotFound / Exists (errors.translated is
the one errno map). It is not the only code that touches the kernel: the pod runtime has its own
OS layer, podnetd/runtime/host.py (mounts, named network namespaces, cgroups, pidfds, /proc).
Everything above the two is logic that can be tested without them.
"""

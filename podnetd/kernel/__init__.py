"""The one layer that touches the kernel (netlink, sysctl, nftables).

Flat functions taking and returning plain values. Each is idempotent where the kernel says
"exists" or "not found", and maps errno to the exceptions in errors.py. Everything above this
package is logic that can be tested without it.
"""

"""podnetctl doctor: a diagnosis of the fabric from one node.

Pure verdict modules (peers, mtu, drift, vxlan, node, antispoof) turn facts into Checks; the
I/O lives in probe (crafted packets through scapy on raw and packet sockets), endpoint (the
probe endpoint the doctor attaches and removes), facts (kernel and sysctl reads) and run (the
order of things).
"""

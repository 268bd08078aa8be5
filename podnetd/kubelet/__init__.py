"""Every podnetd a kubelet: the node agent's half of the cluster (registration, the node Lease,
the pods bound to this node run by the pod runtime, their status written back)."""

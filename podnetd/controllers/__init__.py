"""The cluster's control loops, run by the elected leader among the nodes (leader.py): the
scheduler (scheduling.py), the node lifecycle controller (node_lifecycle.py) and the namespace
controller (namespaces.py). Each watches the API through informers (informer.py) and writes
through it as its own user, so RBAC governs them as it governs everyone."""

"""The cluster API (podnet.api.v1): Kubernetes-shaped objects in a store of record (etcd, or the
node's SQLite store), served by every podnetd with authentication, RBAC and an audit log."""

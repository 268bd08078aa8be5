#!/usr/bin/env bash
# Provision one lab VM (run as root by Vagrant). Installs podnet from the synced repository with
# the README's own commands, then: etcd on node 1, this node's certificates (made on the host by
# vagrant/pki.py, synced to /opt/podnet-pki), podnetd as a systemd unit serving the cluster API,
# the busybox image, and on node 1 the client config.
#
#   provision.sh --print-podnetd-args   print podnetd's arguments and exit (nothing changed;
#                                       tests/test_vagrant_validate.py checks them)
set -euo pipefail
: "${PODNET_NODE_INDEX:?}" "${PODNET_NODE_IP:?}" "${PODNET_ETCD_IP:?}" "${PODNET_NODE_IPS:?}"
CLUSTER_CIDR="${PODNET_CLUSTER_CIDR:-10.244.0.0/16}"
NODE="node${PODNET_NODE_INDEX}"
NODE_LABELS="${PODNET_NODE_LABELS:-lab.podnet.io/vm=${NODE}}"
ETCD_URL="http://${PODNET_ETCD_IP}:2379"
PKI_SRC=/opt/podnet-pki
PKI=/etc/podnet/pki
API_PORT=6443
AUDIT_LOG=/var/log/podnet/audit.log
IMAGE=busybox:1   # the image examples/cluster/web.yaml runs

# The node daemon, the cluster API included: TLS on the private address with this node's
# certificate (CN=system:node:NAME, O=system:nodes: the identity a kubelet has), users
# authenticated by certificates of the lab CA, changes and denials audited. The pod runtime
# uses its defaults, /etc/cni/net.d (the conflist `make install` wrote) and /opt/cni/bin.
podnetd_args() {
  echo "--node-name ${NODE} --node-ip ${PODNET_NODE_IP}" \
    "--store etcd --etcd-endpoints ${ETCD_URL} --cluster-cidr ${CLUSTER_CIDR}" \
    "--api-listen ${PODNET_NODE_IP}:${API_PORT}" \
    "--tls-cert ${PKI}/node.crt --tls-key ${PKI}/node.key --tls-ca ${PKI}/ca.crt" \
    "--client-ca ${PKI}/ca.crt --audit-log ${AUDIT_LOG}" \
    "--node-labels ${NODE_LABELS}"
}
if [ "${1:-}" = --print-podnetd-args ]; then podnetd_args; exit 0; fi

START=$(date +%s)
log() { echo "provision $NODE (+$(( $(date +%s) - START ))s): $*"; }

# The VMs have no internet: pip takes everything from the wheelhouse the lab synced in. The apt
# half of `make deps` finds every package already in the box and installs nothing.
if compgen -G "/opt/podnet-wheels/*.whl" >/dev/null; then
  export PIP_NO_INDEX=1 PIP_FIND_LINKS=/opt/podnet-wheels
fi
# Byte-compiling every installed module (scapy, grpcio-tools...) takes minutes on a TCG guest;
# Python compiles what podnet imports on first use instead.
export PIP_NO_COMPILE=1
cd /vagrant
log "make deps"
# The box's system Python already holds every dependency, pip and setuptools included
# (build-box installs the wheelhouse), so the venv sees them and pip installs only podnet
# itself, without a build environment; without its own pip the venv is made in seconds, not the
# minutes ensurepip takes on a TCG guest.
if python3 -c 'import grpc, pyroute2, setuptools, pip' 2>/dev/null; then
  export PIP_NO_BUILD_ISOLATION=0
  make deps VENV_FLAGS="--system-site-packages --without-pip"
else
  make deps
fi
log "make install"
make install

if [ "$PODNET_NODE_INDEX" = 1 ]; then
  log "etcd on ${ETCD_URL}"
  cat > /etc/default/etcd <<CONF
ETCD_NAME=${NODE}
ETCD_DATA_DIR=/var/lib/etcd/default
ETCD_LISTEN_CLIENT_URLS=${ETCD_URL},http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=${ETCD_URL}
ETCD_LISTEN_PEER_URLS=http://127.0.0.1:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:2380
ETCD_INITIAL_CLUSTER=${NODE}=http://127.0.0.1:2380
# the cluster API stores objects of up to 3 MiB (etcd allows 1.5 MiB requests by default)
ETCD_MAX_REQUEST_BYTES=5242880
CONF
  systemctl enable etcd.service
  systemctl restart etcd.service
  for _ in $(seq 120); do
    ETCDCTL_API=3 etcdctl --endpoints="$ETCD_URL" endpoint health >/dev/null 2>&1 && break
    sleep 1
  done
  ETCDCTL_API=3 etcdctl --endpoints="$ETCD_URL" endpoint health
fi

# `make install` wrote /etc/cni/net.d/10-podnet.conflist (podnet, then portmap) and the
# plugins in /opt/cni/bin: the pod runtime's defaults on a VM, nothing to add.
[ -f /etc/cni/net.d/10-podnet.conflist ] || { log "make install wrote no CNI conflist"; exit 1; }

log "certificates from ${PKI_SRC}"
for f in ca.crt node.crt node.key; do
  [ -s "${PKI_SRC}/${f}" ] || { log "${PKI_SRC}/${f} missing (vagrant/pki.py makes it on the host)"; exit 1; }
done
# root only: the synced copy belongs to the vagrant user
install -d -m 0700 "$PKI"
install -m 0644 "${PKI_SRC}/ca.crt" "${PKI_SRC}/node.crt" "$PKI/"
install -m 0600 "${PKI_SRC}/node.key" "$PKI/"
install -d -m 0750 "$(dirname "$AUDIT_LOG")"
ARGS="$(podnetd_args)"

log "podnetd unit: podnetd ${ARGS}"
cat > /etc/systemd/system/podnetd.service <<UNIT
[Unit]
Description=podnet node daemon
Wants=network-online.target
After=network-online.target systemd-networkd.service

[Service]
ExecStart=/usr/local/bin/podnetd ${ARGS}
Restart=on-failure
RestartSec=2
# Pods outlive the daemon: a stop or restart must not kill what it started for them.
KillMode=process

[Install]
WantedBy=multi-user.target
UNIT
# Graceful node shutdown (the README's unit): at shutdown, stopped before podnetd, it stops every
# pod with a capped grace period. Without it the containers are left to systemd-shutdown, which
# waits 90 s for a container PID 1 that ignores SIGTERM before it kills it: a slow reboot.
cat > /etc/systemd/system/podnet-pods-shutdown.service <<'UNIT'
[Unit]
Description=Stop podnet pods before the node shuts down
After=podnetd.service
Wants=podnetd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/usr/local/bin/podnetctl pod stop --all --grace-period 10
TimeoutStopSec=90

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable podnetd.service podnet-pods-shutdown.service
systemctl restart podnetd.service
systemctl start podnet-pods-shutdown.service
# Wait for the socket with a cheap test; podnetctl (a Python start) only once it exists.
for _ in $(seq 300); do [ -S /run/podnet/podnetd.sock ] && break; sleep 1; done
ready="" status=""
for _ in $(seq 30); do status="$(podnetctl status 2>&1)" && ready=1 && break; sleep 2; done
echo "$status"
[ -n "$ready" ] || { log "podnetd is not ready"; exit 1; }

# The image the cluster's pods run, on every node (a pod runs where it is bound). As root
# through the local socket: root has no client config, so podnetctl stays node-local.
log "image ${IMAGE}"
images="$(podnetctl image list --socket /run/podnet/podnetd.sock)"
if ! awk '{print $1}' <<<"$images" | grep -qx "$IMAGE"; then
  install -d -m 0700 /var/lib/podnet-lab
  /vagrant/.venv/bin/python -m podnetd.runtime.busybox_image /var/lib/podnet-lab/busybox.tar
  podnetctl image import --socket /run/podnet/podnetd.sock "$IMAGE" /var/lib/podnet-lab/busybox.tar
fi

# The client config (admin, current; alice, refused by RBAC) on node 1: for root as
# /etc/podnet/admin.conf (PODNET_CONFIG=/etc/podnet/admin.conf podnetctl ..., as kubeadm's
# admin.conf), and as the vagrant user's default, so `vagrant ssh node1 -c 'podnetctl get nodes'`
# speaks to the cluster.
if [ -f "${PKI_SRC}/config.yaml" ]; then
  log "client config"
  install -m 0600 "${PKI_SRC}/config.yaml" /etc/podnet/admin.conf
  install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.config /home/vagrant/.config/podnet
  install -m 0600 -o vagrant -g vagrant "${PKI_SRC}/config.yaml" /home/vagrant/.config/podnet/config.yaml
fi
log "ready"

#!/usr/bin/env bash
# Provision one lab VM (run as root by Vagrant). Installs podnet from the synced repository with
# the README's own commands, then: etcd on node 1, the CNI conflist, podnetd as a systemd unit.
set -euo pipefail
: "${PODNET_NODE_INDEX:?}" "${PODNET_NODE_IP:?}" "${PODNET_ETCD_IP:?}" "${PODNET_NODE_IPS:?}"
CLUSTER_CIDR="${PODNET_CLUSTER_CIDR:-10.244.0.0/16}"
NODE="node${PODNET_NODE_INDEX}"
ETCD_URL="http://${PODNET_ETCD_IP}:2379"
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
CONF
  systemctl enable etcd.service
  systemctl restart etcd.service
  for _ in $(seq 120); do
    ETCDCTL_API=3 etcdctl --endpoints="$ETCD_URL" endpoint health >/dev/null 2>&1 && break
    sleep 1
  done
  ETCDCTL_API=3 etcdctl --endpoints="$ETCD_URL" endpoint health
fi

log "CNI conflist"
install -d /etc/cni/net.d
cat > /etc/cni/net.d/10-podnet.conflist <<'CONF'
{
  "cniVersion": "1.0.0",
  "name": "podnet",
  "plugins": [{"type": "podnet"}]
}
CONF

# podnetd with --store etcd once the daemon has it (issue 3); until then a fixed pod CIDR per node
# and static routes between the nodes (the lab's stand-in, so the VMs can be proved end to end).
if podnetd --help | grep -q -- '--store'; then
  ARGS="--node-name ${NODE} --node-ip ${PODNET_NODE_IP} --store etcd --etcd-endpoints ${ETCD_URL} --cluster-cidr ${CLUSTER_CIDR}"
  rm -f /etc/systemd/system/podnet-lab-routes.service
else
  log "podnetd has no --store yet: fixed pod CIDRs and static routes"
  prefix="${CLUSTER_CIDR%%.0.0/*}"
  ARGS="--node-name ${NODE} --pod-cidr ${prefix}.${PODNET_NODE_INDEX}.0/24"
  routes=""
  IFS=, read -ra ips <<<"$PODNET_NODE_IPS"
  for j in "${!ips[@]}"; do
    [ "$((j + 1))" = "$PODNET_NODE_INDEX" ] && continue
    routes+="ExecStart=/sbin/ip route replace ${prefix}.$((j + 1)).0/24 via ${ips[$j]}"$'\n'
  done
  cat > /etc/systemd/system/podnet-lab-routes.service <<UNIT
[Unit]
Description=podnet lab: static routes to the other nodes' pod CIDRs (until --store etcd)
After=systemd-networkd.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStartPre=/bin/sh -c 'for i in \$(seq 60); do ip -4 addr show dev eth1 | grep -q "inet ${PODNET_NODE_IP}/" && exit 0; sleep 1; done; exit 1'
${routes}
[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable podnet-lab-routes.service
  systemctl restart podnet-lab-routes.service
fi

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
log "ready"

"""The Vagrant lab's Vagrantfile is valid for vagrant (no box, no VM needed: `vagrant validate`),
and the lab's scripts parse. vagrant and vagrant-libvirt come from the Makefile's
TEST_APT_PACKAGES (`make test` installs them), so it is never skipped. The lab itself (VMs
under TCG, ~12 min) is `make lab-vagrant`, opt-in.

The cluster's side, statically: loading the Vagrantfile makes the lab's certificates
(vagrant/pki.py; real openssl certificates, checked here with `cryptography` and openssl verify)
and the client config (read by podnetctl's own loader); the podnetd arguments provisioning
writes into the unit (`provision.sh --print-podnetd-args`) are parsed by podnetd's own flag
parser; provisioning has etcd's request limit, the image and the client config. The suite's
cluster checks run against the netns lab in tests/test_vagrant_suite_cluster.py."""
import os
import py_compile
import re
import shlex
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from podnetd import config
from podnetd.ctl import kubeconfig
from podnetd.features import FEATURES
from testlib import REPO

VAGRANT_DIR = REPO / "vagrant"
PROVISION = VAGRANT_DIR / "provision.sh"


def vagrant(tmp_path, *args, **env):
    env.setdefault("PODNET_PKI_DIR", str(tmp_path / "pki"))
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotvagrant"),
        "VAGRANT_CWD": str(VAGRANT_DIR),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
        **env,
    }
    return subprocess.run(["vagrant", *args], env=full_env, capture_output=True, text=True,
                          timeout=120)


def test_vagrantfile_validates(tmp_path):
    proc = vagrant(tmp_path, "validate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_vagrantfile_settings_from_environment(tmp_path):
    proc = vagrant(tmp_path, "validate", PODNET_NODES="5", PODNET_BOX="debian/bookworm64",
                   PODNET_LIBVIRT_DRIVER="kvm", PODNET_MEMORY="2048")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Five machines are defined: node1..node5 (the status of a never-created machine needs no box).
    status = vagrant(tmp_path, "status", "--machine-readable", PODNET_NODES="5")
    names = {line.split(",")[1] for line in status.stdout.splitlines() if ",state," in line}
    assert names == {f"node{i}" for i in range(1, 6)}, status.stdout + status.stderr


def test_vagrantfile_refuses_a_bad_node_count(tmp_path):
    proc = vagrant(tmp_path, "validate", PODNET_NODES="0")
    assert proc.returncode != 0
    assert "PODNET_NODES must be between 1 and 20" in proc.stdout + proc.stderr


@pytest.mark.parametrize("script", ["lab", "build-box", "provision.sh"])
def test_lab_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(VAGRANT_DIR / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", ["labpod.py", "suite.py", "pki.py"])
def test_lab_python_compiles(script, tmp_path):
    py_compile.compile(str(VAGRANT_DIR / script), cfile=str(tmp_path / "out.pyc"), doraise=True)


# -- the cluster: certificates, client config, podnetd's flags, provisioning ----------------------


def cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def subject(c: x509.Certificate) -> tuple[str, list[str]]:
    return (c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            [a.value for a in c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)])


def sans(c: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ([str(ip) for ip in ext.get_values_for_type(x509.IPAddress)],
            ext.get_values_for_type(x509.DNSName))


def verify(ca, *certs) -> None:
    proc = subprocess.run(["openssl", "verify", "-CAfile", str(ca), *map(str, certs)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_loading_the_vagrantfile_makes_each_vm_its_certificates(tmp_path):
    proc = vagrant(tmp_path, "validate", PODNET_NODES="3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pki = tmp_path / "pki"
    for i in (1, 2, 3):
        d = pki / f"node{i}"
        # what is synced to the VM: its own certificate and key and the CA's certificate only
        expected = {"ca.crt", "node.crt", "node.key", "node.ip"} | ({"config.yaml"} if i == 1 else set())
        assert {p.name for p in d.iterdir()} == expected
        c = cert(d / "node.crt")
        assert subject(c) == (f"system:node:node{i}", ["system:nodes"])
        assert sans(c) == ([f"192.168.56.{10 + i}"], [f"node{i}"])
        eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {u.dotted_string for u in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
        assert (d / "node.key").stat().st_mode & 0o077 == 0
        assert (d / "ca.crt").read_bytes() == (pki / "ca" / "ca.crt").read_bytes()
        verify(d / "ca.crt", d / "node.crt")
    assert not list(pki.glob("node*/ca.key"))

    # loading it again changes nothing; another subnet remakes the node certificates, not the CA
    before = {p: p.read_bytes() for p in pki.rglob("*") if p.is_file() and p.name != ".lock"}
    assert vagrant(tmp_path, "validate", PODNET_NODES="3").returncode == 0
    assert before == {p: p.read_bytes() for p in pki.rglob("*") if p.is_file() and p.name != ".lock"}
    proc = vagrant(tmp_path, "validate", PODNET_NODES="3", PODNET_SUBNET="10.77.3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sans(cert(pki / "node2" / "node.crt")) == (["10.77.3.12"], ["node2"])
    assert (pki / "ca" / "ca.crt").read_bytes() == before[pki / "ca" / "ca.crt"]


def test_node1_gets_a_client_config_for_the_admin_and_a_plain_user(tmp_path):
    assert vagrant(tmp_path, "validate", PODNET_NODES="4").returncode == 0
    pki = tmp_path / "pki"
    cfg = kubeconfig.load(str(pki / "node1" / "config.yaml"))
    assert cfg.current_context == "podnet-vagrant"
    cluster = cfg.clusters["podnet-vagrant"]
    assert cluster.servers == tuple(f"https://192.168.56.{10 + i}:6443" for i in range(1, 5))
    assert cluster.ca_data == (pki / "ca" / "ca.crt").read_bytes()
    contexts = {name: (c.cluster, c.user, c.namespace) for name, c in cfg.contexts.items()}
    assert contexts == {"podnet-vagrant": ("podnet-vagrant", "admin", "default"),
                        "podnet-vagrant-alice": ("podnet-vagrant", "alice", "default")}
    # the users are who the config says: admin in system:masters (kubeadm's admin.conf), alice in
    # no group, both signed by the lab CA, client certificates only
    for user, groups in (("admin", ["system:masters"]), ("alice", [])):
        u = cfg.users[user]
        c = x509.load_pem_x509_certificate(u.cert_data)
        assert subject(c) == (user, groups)
        assert u.key_data == (pki / "users" / f"{user}.key").read_bytes()
        verify(pki / "ca" / "ca.crt", pki / "users" / f"{user}.crt")
    assert (pki / "node1" / "config.yaml").stat().st_mode & 0o077 == 0
    assert not (pki / "node2" / "config.yaml").exists()


def test_vagrantfile_refuses_an_ssd_node_that_is_not_a_node(tmp_path):
    proc = vagrant(tmp_path, "validate", PODNET_NODES="3", PODNET_SSD_NODE="4")
    assert proc.returncode != 0
    assert "PODNET_SSD_NODE must be a node, 1..3 (got 4)" in proc.stdout + proc.stderr


def provision_env(index: int, labels: str) -> dict:
    return {"PATH": os.environ["PATH"], "PODNET_NODE_INDEX": str(index),
            "PODNET_NODE_IP": f"192.168.56.{10 + index}", "PODNET_ETCD_IP": "192.168.56.11",
            "PODNET_NODE_IPS": "192.168.56.11,192.168.56.12,192.168.56.13",
            "PODNET_CLUSTER_CIDR": "10.244.0.0/16", "PODNET_NODE_LABELS": labels}


def test_provisioned_podnetd_serves_the_cluster_api_with_podnetds_own_flags(tmp_path):
    """The unit's arguments, parsed by podnetd's parser (a misspelt or refused flag fails here),
    with the VM's certificate paths pointed at the files vagrant/pki.py made."""
    assert vagrant(tmp_path, "validate", PODNET_NODES="3").returncode == 0
    proc = subprocess.run(["bash", str(PROVISION), "--print-podnetd-args"], capture_output=True,
                          text=True, env=provision_env(2, "lab.podnet.io/vm=node2,disk=ssd"))
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    flags = dict(zip(argv[::2], argv[1::2]))
    assert flags == {
        "--node-name": "node2", "--node-ip": "192.168.56.12", "--store": "etcd",
        "--etcd-endpoints": "http://192.168.56.11:2379", "--cluster-cidr": "10.244.0.0/16",
        "--api-listen": "192.168.56.12:6443",
        "--tls-cert": "/etc/podnet/pki/node.crt", "--tls-key": "/etc/podnet/pki/node.key",
        "--tls-ca": "/etc/podnet/pki/ca.crt", "--client-ca": "/etc/podnet/pki/ca.crt",
        "--audit-log": "/var/log/podnet/audit.log",
        "--node-labels": "lab.podnet.io/vm=node2,disk=ssd"}
    node_dir = str(tmp_path / "pki" / "node2")
    local = [a.replace("/etc/podnet/pki", node_dir) for a in argv]
    settings = config.parse([*local, "--state-dir", str(tmp_path / "state")], FEATURES)
    api = settings.features["apiserver"]
    assert (api.api_listen, api.client_ca, api.audit_log, api.etcd_endpoints) == (
        "192.168.56.12:6443", f"{node_dir}/ca.crt", "/var/log/podnet/audit.log",
        ("http://192.168.56.11:2379",))
    assert dict(settings.features["kubelet"].labels) == {"lab.podnet.io/vm": "node2",
                                                         "disk": "ssd"}


def test_the_vagrantfile_labels_each_vm_and_one_ssd():
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    assert '"PODNET_NODE_LABELS" => node_labels(i)' in text
    assert 'labels = ["lab.podnet.io/vm=node#{i}"]' in text
    assert 'labels << "disk=ssd" if i == SSD_NODE' in text
    # the per-node synced folder: each VM gets its own directory of the PKI, nothing else
    assert re.search(r'node\.vm\.synced_folder File\.join\(PKI_DIR, "node#\{i\}"\), "/opt/podnet-pki"',
                     text)


def test_provisioning_has_etcds_limit_the_image_and_the_client_config():
    text = PROVISION.read_text()
    assert "ETCD_MAX_REQUEST_BYTES=5242880" in text
    # busybox:1 (what examples/cluster/web.yaml runs) imported on every node, before node 1's
    # config exists (root's podnetctl stays on the local socket)
    assert "IMAGE=busybox:1" in (text)
    assert "busybox:1" in (REPO / "examples" / "cluster" / "web.yaml").read_text()
    assert "-m podnetd.runtime.busybox_image" in text
    assert 'podnetctl image import --socket /run/podnet/podnetd.sock "$IMAGE"' in text
    assert "/home/vagrant/.config/podnet/config.yaml" in text
    assert "install -m 0600 \"${PKI_SRC}/node.key\"" in text
    # the conflist is make install's (podnet, then portmap), not overwritten by provisioning
    assert "cat > /etc/cni/net.d" not in text

"""A throwaway CA and node certificates for the lab's mutual TLS, made with the openssl CLI.

Peers dial each other by underlay IP, so each node certificate carries its IP (and its name) as
subjectAltNames and is good for both server and client authentication."""
import os
import subprocess


class PkiError(Exception):
    pass


def _openssl(*args: str, what: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise PkiError(f"{what}: openssl: {lines[-1] if lines else proc.returncode}")


def _key(path: str) -> None:
    old = os.umask(0o077)
    try:
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path,
                 what=f"key {path}")
    finally:
        os.umask(old)


def make_ca(directory: str, lab: str) -> tuple[str, str]:
    """Returns (ca cert path, ca key path)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert, key = os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key")
    _key(key)
    _openssl("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "30", "-subj",
             f"/CN=podnet lab {lab} CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", what="lab CA")
    return cert, key


def make_node_cert(directory: str, ca_cert: str, ca_key: str, name: str, ip: str) -> tuple[str, str]:
    """Returns (cert path, key path) for one node, signed by the lab CA."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert, key = os.path.join(directory, "node.crt"), os.path.join(directory, "node.key")
    csr, ext = os.path.join(directory, "node.csr"), os.path.join(directory, "node.ext")
    _key(key)
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={name}", what=f"csr {name}")
    with open(ext, "w") as f:
        f.write(f"subjectAltName=IP:{ip},DNS:{name}\n"
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "30", "-extfile", ext, what=f"certificate {name}")
    os.unlink(csr)
    os.unlink(ext)
    return cert, key


def make_client_cert(directory: str, ca_cert: str, ca_key: str, user: str,
                     groups: tuple[str, ...] = (), days: int = 30) -> tuple[str, str]:
    """A client certificate for the cluster API: CN = user, one O per group (as kubeadm makes
    the admin's: O=system:masters). Returns (cert path, key path)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    base = user.replace(":", "_").replace("/", "_")
    cert, key = os.path.join(directory, f"{base}.crt"), os.path.join(directory, f"{base}.key")
    csr, ext = os.path.join(directory, f"{base}.csr"), os.path.join(directory, f"{base}.ext")
    _key(key)
    subject = "".join(f"/O={g}" for g in groups) + f"/CN={user}"
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", subject, what=f"csr {user}")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", str(days), "-extfile", ext, what=f"certificate {user}")
    os.unlink(csr)
    os.unlink(ext)
    return cert, key

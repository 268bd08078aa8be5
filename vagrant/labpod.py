#!/usr/bin/env python3
"""In-VM helper of the Vagrant lab (runs as root inside a lab VM, system python3, stdlib only).

  labpod.py mode                       -> "runtime" when `podnetctl pod` exists, else "cni"
  labpod.py up NAME... [--mode M]      -> start pods, each with a TCP echo server on PORT; prints
                                          [{"name", "ip"}] as JSON
  labpod.py check --from NAME,... IP... [--wait S]
                                       -> from inside each pod: ping and TCP to each IP, each
                                          retried until it works or S seconds pass; JSON
  labpod.py down NAME... [--mode M]
  labpod.py serve                      -> the echo server (run inside the pod)

"cni" mode is the stand-in until the pod runtime lands: a netns per pod attached by running the
installed plugin (/opt/cni/bin/podnet) with the conflist in /etc/cni/net.d, as a runtime would.
"""
import argparse
import concurrent.futures
import ctypes
import json
import os
import pathlib
import socket
import socketserver
import subprocess
import sys
import time

PORT = 7000
CONF_DIR = pathlib.Path("/etc/cni/net.d")
CNI_BIN = "/opt/cni/bin"
STATE = pathlib.Path("/run/podnet-lab")
IMAGE = os.environ.get("PODNET_LAB_IMAGE", "busybox")
CLONE_NEWNET = 0x40000000


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def detect_mode() -> str:
    try:
        ok = sh("podnetctl", "pod", "--help", check=False).returncode == 0
    except FileNotFoundError:
        ok = False
    return "runtime" if ok else "cni"


def conflist() -> dict:
    files = sorted(CONF_DIR.glob("*.conflist"))
    if not files:
        raise SystemExit(f"labpod: no conflist in {CONF_DIR}")
    return json.loads(files[0].read_text())


def cni(command: str, name: str) -> dict:
    conf = conflist()
    plugin = dict(conf["plugins"][0], cniVersion=conf["cniVersion"], name=conf["name"])
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": f"lab-{name}",
           "CNI_NETNS": f"/run/netns/{name}", "CNI_IFNAME": "eth0", "CNI_PATH": CNI_BIN}
    proc = subprocess.run([f"{CNI_BIN}/{plugin['type']}"], input=json.dumps(plugin), env=env,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise SystemExit(f"labpod: CNI {command} {name}: {proc.stdout.strip()} {proc.stderr.strip()}")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def up_cni(name: str) -> str:
    if not pathlib.Path(f"/run/netns/{name}").exists():
        sh("ip", "netns", "add", name)
    sh("nsenter", f"--net=/run/netns/{name}", "ip", "link", "set", "lo", "up")
    result = cni("ADD", name)
    ip = result["ips"][0]["address"].split("/")[0]
    STATE.mkdir(parents=True, exist_ok=True)
    log = open(STATE / f"{name}.log", "ab")
    server = subprocess.Popen(["nsenter", f"--net=/run/netns/{name}", sys.executable,
                               os.path.abspath(__file__), "serve"],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    (STATE / f"{name}.pid").write_text(str(server.pid))
    return ip


MANIFEST = """apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
  - name: echo
    image: {image}
    command: ["nc", "-ll", "-p", "{port}", "-e", "cat"]
"""
VENV_PY = "/vagrant/.venv/bin/python"


def ensure_image() -> None:
    """The busybox image the README builds (podnetd.runtime.busybox_image), imported once."""
    listed = sh("podnetctl", "image", "list", check=False).stdout
    wanted = {IMAGE, IMAGE if ":" in IMAGE else f"{IMAGE}:latest"}  # the list shows the tag
    if any(line.split()[:1] and line.split()[0] in wanted for line in listed.splitlines()):
        return
    STATE.mkdir(parents=True, exist_ok=True)
    archive = STATE / "busybox.tar"
    proc = sh(VENV_PY, "-m", "podnetd.runtime.busybox_image", str(archive), check=False, cwd="/vagrant")
    if proc.returncode != 0:
        raise SystemExit(f"labpod: build the busybox image: {proc.stderr.strip()}")
    proc = sh("podnetctl", "image", "import", IMAGE, str(archive), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"labpod: image import {IMAGE}: {proc.stderr.strip() or proc.stdout.strip()}")


def up_runtime(name: str) -> str:
    """Needs the image: ensure_image() first. Every podnetctl call is a Python start, which
    costs seconds on a TCG guest: `pod run -o json` already answers once the pod has started."""
    STATE.mkdir(parents=True, exist_ok=True)  # /run: empty again after a reboot
    path = STATE / f"{name}.yaml"
    path.write_text(MANIFEST.format(name=name, image=IMAGE, port=PORT))
    sh("podnetctl", "pod", "rm", name, check=False)
    proc = sh("podnetctl", "pod", "run", "-f", str(path), "-o", "json", check=False)
    if proc.returncode != 0:
        raise SystemExit(f"labpod: pod run {name}: {proc.stderr.strip() or proc.stdout.strip()}")
    try:
        status = json.loads(proc.stdout).get("status", {})
    except ValueError:
        status = {}
    if status.get("phase") == "Running" and status.get("podIP"):
        return status["podIP"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        got = sh("podnetctl", "pod", "get", name, "-o", "json", check=False)
        if got.returncode == 0:
            status = json.loads(got.stdout).get("status", {})
            if status.get("phase") == "Running" and status.get("podIP"):
                return status["podIP"]
        time.sleep(1)
    raise SystemExit(f"labpod: pod {name} not Running with an IP after 180 s: {json.dumps(status)[:300]}")


def pod_netns(name: str, mode: str) -> str:
    if mode == "cni":
        return f"/run/netns/{name}"
    pod = json.loads(sh("podnetctl", "pod", "get", name, "-o", "json").stdout)
    ip = pod.get("status", {}).get("podIP")
    if not ip:
        raise SystemExit(f"labpod: pod {name} has no IP")
    return netns_with_address(ip)


def netns_with_address(ip: str) -> str:
    """The netns (as /proc/PID/ns/net) of a process whose namespace holds IP: how a pod started
    by any runtime is found without knowing the runtime's internals."""
    seen = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        path = f"/proc/{pid}/ns/net"
        try:
            inode = os.stat(path).st_ino
        except OSError:
            continue
        if inode in seen:
            continue
        seen.add(inode)
        out = sh("nsenter", f"--net={path}", "ip", "-4", "-o", "addr", "show", check=False).stdout
        if f" {ip}/" in out:
            return path
    raise SystemExit(f"labpod: no network namespace holds {ip}")


def enter_netns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise SystemExit(f"labpod: setns {path}: {os.strerror(ctypes.get_errno())}")
    os.close(fd)


def tcp_ok(ip: str) -> bool:
    token = f"podnet-{os.getpid()}-{ip}".encode()
    try:
        with socket.create_connection((ip, PORT), timeout=2) as s:
            s.sendall(token + b"\n")
            got = b""
            while len(got) < len(token):
                chunk = s.recv(256)
                if not chunk:
                    break
                got += chunk
            return got.startswith(token)
    except OSError:
        return False


def ping_ok(ip: str) -> bool:
    return subprocess.run(["ping", "-n", "-q", "-c", "1", "-W", "1", ip],
                          capture_output=True).returncode == 0


def check(name: str, ips: list[str], wait: float, mode: str) -> dict:
    enter_netns(pod_netns(name, mode))
    results = {}
    for ip in ips:
        deadline = time.monotonic() + wait
        ping = tcp = False
        while True:
            ping = ping or ping_ok(ip)
            tcp = tcp or tcp_ok(ip)
            if (ping and tcp) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        results[ip] = {"ping": ping, "tcp": tcp}
    return results


def check_from(names: list[str], ips: list[str], wait: float, mode: str) -> dict:
    """Each source pod in a forked child (setns is per process), all at once."""
    children = {}
    for name in names:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                out = json.dumps(check(name, [ip for ip in ips], wait, mode)).encode()
            except BaseException as e:  # noqa: BLE001 - reported to the parent as an error
                out = json.dumps({"error": f"{name}: {e}"}).encode()
            with os.fdopen(w, "wb") as f:
                f.write(out)
            os._exit(0)
        os.close(w)
        children[name] = (pid, r)
    results = {}
    for name, (pid, r) in children.items():
        with os.fdopen(r, "rb") as f:
            results[name] = json.loads(f.read() or b'{"error": "no answer"}')
        os.waitpid(pid, 0)
    return results


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def down(name: str, mode: str) -> None:
    if mode == "runtime":
        sh("podnetctl", "pod", "rm", name, check=False)
        return
    pidfile = STATE / f"{name}.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), 15)
        except (ProcessLookupError, ValueError):
            pass
        pidfile.unlink()
    if pathlib.Path(f"/run/netns/{name}").exists():
        cni("DEL", name)
        sh("ip", "netns", "del", name, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(prog="labpod.py")
    ap.add_argument("command", choices=["mode", "up", "check", "down", "serve"])
    ap.add_argument("args", nargs="*", help="up/down: pod names; check: target IPs")
    ap.add_argument("--from", dest="sources", default="", help="check: source pods, comma-separated")
    ap.add_argument("--mode", default=os.environ.get("PODNET_LAB_PODS") or None,
                    choices=["cni", "runtime"])
    ap.add_argument("--wait", type=float, default=30)
    args = ap.parse_intermixed_args()
    if args.command == "serve":
        with Server(("0.0.0.0", PORT), Echo) as srv:
            srv.serve_forever()
        return 0
    mode = args.mode or detect_mode()
    if args.command == "mode":
        print(mode)
    elif args.command == "up":
        if mode == "runtime":
            ensure_image()  # once, before the pods that use it start side by side
        # Side by side: on a TCG guest each pod spends seconds waiting on podnetctl and runc.
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(args.args))) as pool:
            ips = list(pool.map(up_cni if mode == "cni" else up_runtime, args.args))
        print(json.dumps([{"name": n, "ip": ip, "mode": mode} for n, ip in zip(args.args, ips)]))
    elif args.command == "check":
        sources = [n for n in args.sources.split(",") if n]
        if not sources:
            ap.error("check needs --from POD[,POD]")
        print(json.dumps(check_from(sources, args.args, args.wait, mode)))
    elif args.command == "down":
        for name in args.args:
            down(name, mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())

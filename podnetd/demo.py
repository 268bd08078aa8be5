"""`make demo` (single node): podnetd in a node netns, two pods attached through the plugin,
their addresses and a ping between them, then teardown of everything it made."""
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

PLUGIN = pathlib.Path(__file__).resolve().parent.parent / "cni-plugin" / "plugin.py"


def _sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def _cni(command: str, config: dict, container_id: str, netns: str) -> dict:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"]}
    proc = subprocess.run([sys.executable, "-I", "-S", str(PLUGIN)], input=json.dumps(config),
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"CNI {command} {container_id}: {proc.stdout.strip()} {proc.stderr.strip()}")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def main() -> int:
    tag = f"pndemo{os.getpid() % 10000}"
    workdir = tempfile.mkdtemp(prefix=f"{tag}-")
    node_ns, pods = f"{tag}-node", [f"{tag}-pod{i}" for i in (1, 2)]
    sock = os.path.join(workdir, "podnetd.sock")
    config = {"cniVersion": "1.1.0", "name": "podnet-demo", "type": "podnet", "socket": sock}
    with contextlib.ExitStack() as cleanup:
        for ns in (node_ns, *pods):
            _sh("ip", "netns", "add", ns)
            cleanup.callback(subprocess.run, ["ip", "netns", "del", ns], capture_output=True)
        cleanup.callback(subprocess.run, ["rm", "-rf", workdir])
        log = open(os.path.join(workdir, "podnetd.log"), "wb")
        daemon = subprocess.Popen(["nsenter", f"--net=/run/netns/{node_ns}", sys.executable, "-m",
                                   "podnetd.main", "--node-name", "demo", "--pod-cidr", "10.88.0.0/24",
                                   "--socket", sock, "--state-dir", os.path.join(workdir, "state")],
                                  stdout=log, stderr=subprocess.STDOUT)
        cleanup.callback(daemon.wait)
        cleanup.callback(daemon.terminate)
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            if daemon.poll() is not None or time.monotonic() > deadline:
                print(open(log.name).read())
                return 1
            time.sleep(0.05)
        addresses = {}
        for i, ns in enumerate(pods, 1):
            result = _cni("ADD", config, f"demo-pod-{i}", f"/run/netns/{ns}")
            cleanup.callback(_cni, "DEL", config, f"demo-pod-{i}", f"/run/netns/{ns}")
            addresses[ns] = result["ips"][0]["address"].split("/")[0]
            print(f"pod{i}: {result['ips'][0]['address']} via {result['ips'][0]['gateway']}")
        ping = subprocess.run(["nsenter", f"--net=/run/netns/{pods[0]}", "ping", "-c", "3", "-i", "0.2",
                               addresses[pods[1]]], capture_output=True, text=True)
        print(ping.stdout.strip())
        return ping.returncode


if __name__ == "__main__":
    sys.exit(main())

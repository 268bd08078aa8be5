"""Images from an OCI registry, for real: Debian's docker-registry in the node's netns, images
pushed there with skopeo, pods run through a real podnetd that pulls them with skopeo and
imports them through the store's checks. imagePullPolicy with the kubelet's defaults,
ErrImagePull then ImagePullBackOff (and a pull that succeeds once the image is pushed),
ErrImageNeverPull, a registry that is down, basic auth from --registry-auth-file, Always
re-pulling a moved tag, concurrent pulls shared, and `image import` still serving short names."""
import base64
import contextlib
import json
import os
import shutil
import subprocess
import time

import pytest

from registry_lib import Registry
from runtime_lib import (RuntimeNode, busybox_archive, busybox_variant, leftovers, pod,
                         state_of)
from testlib import PY, REPO, Netns, unique

pytestmark = pytest.mark.skipif(shutil.which("docker-registry") is None
                                or shutil.which("skopeo") is None,
                                reason="docker-registry or skopeo is not installed")

OPEN_PORT, AUTH_PORT, DOWN_PORT, SILENT_PORT = 5000, 5001, 5009, 5010
USER, PASSWORD = "alice", f"pw-{unique('p')}-secret"


@pytest.fixture(scope="module")
def env():
    """A netns holding an open registry, one with basic auth, and a podnetd that may pull from
    both over plain HTTP, with an auth file for the second one (as 127.0.0.1:PORT only)."""
    spaces = Netns()
    registries, node = [], None
    try:
        ns = spaces.add("rg")
        open_reg = Registry(ns, OPEN_PORT).start()
        registries.append(open_reg)
        auth_reg = Registry(ns, AUTH_PORT, {USER: PASSWORD}).start()
        registries.append(auth_reg)
        auth_file = os.path.join(auth_reg.dir, "auth.json")
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        with open(auth_file, "w") as f:
            json.dump({"auths": {auth_reg.host: {"auth": token}}}, f)
        os.chmod(auth_file, 0o600)
        insecure = f"{open_reg.host},{auth_reg.host},localhost:{AUTH_PORT}"
        node = RuntimeNode(ns, "10.79.0.0/24", extra=[
            "--insecure-registry", insecure, "--insecure-registry",
            f"127.0.0.1:{DOWN_PORT},127.0.0.1:{SILENT_PORT}",
            "--registry-auth-file", auth_file]).start()
        archive = busybox_archive()
        open_reg.push(f"docker-archive:{archive}", "busybox:1")
        auth_reg.push(f"docker-archive:{archive}", "busybox:1", creds=f"{USER}:{PASSWORD}")
        yield node, open_reg, auth_reg
    finally:
        if node:
            log = node.daemon.log()
            node.cleanup()
            assert "Traceback" not in log, log[-4000:]
            assert not leftovers(node.workdir), "mounts left behind"
        for reg in registries:
            reg.cleanup()
        spaces.cleanup()


def app(name: str, image: str, script: str = "exec sleep 3600", **extra) -> dict:
    return {"name": name, "image": image, "command": ["sh", "-c", script], **extra}


def waiting(p: dict, name: str = "c") -> dict:
    return state_of(p, name)["state"].get("waiting") or {}


def running(p: dict) -> bool:
    return "running" in state_of(p, "c")["state"]


def test_pod_runs_from_a_registry_image(env):
    node, reg, _ = env
    image = f"{reg.host}/busybox:1"
    with node.running(pod("pulled", [app("c", image)])):
        p = node.wait("pulled", running, what="running from the pulled image")
        assert state_of(p, "c")["imageID"].startswith("sha256:")
        assert node.exec("pulled", "cat", "/etc/image-release").stdout
        text = node.ctl("pod", "describe", "pulled").stdout
        assert f'Pulling image "{image}"' in text, text
        assert f'Successfully pulled image "{image}" in ' in text, text
        assert image in node.ctl("image", "list").stdout
        # tag 1: IfNotPresent by default, so a second pod uses what is there
        with node.running(pod("again", [app("c", image)])):
            node.wait("again", running)
            text = node.ctl("pod", "describe", "again").stdout
            assert f'Container image "{image}" already present on machine' in text, text
            assert "Pulling image" not in text, text


def test_missing_tag_is_err_image_pull_then_back_off_until_pushed(env):
    node, reg, _ = env
    image = f"{reg.host}/busybox:{unique('t')}"
    with node.running(pod("notag", [app("c", image)])):
        p = node.wait("notag", lambda p: waiting(p).get("reason") == "ErrImagePull",
                      what="ErrImagePull")
        assert "not found (manifest unknown)" in waiting(p)["message"], p
        assert p["status"]["phase"] == "Pending"
        p = node.wait("notag", lambda p: waiting(p).get("reason") == "ImagePullBackOff",
                      what="ImagePullBackOff")
        assert waiting(p)["message"] == f'Back-off pulling image "{image}"'
        # STATUS shows the waiting reason; with this test's short back-off the pull is tried
        # again within seconds (ErrImagePull once more), so look until it shows the back-off
        deadline = time.monotonic() + 30
        while "ImagePullBackOff" not in (listing := node.ctl("pod", "ls").stdout):
            assert "ErrImagePull" in listing and time.monotonic() < deadline, listing
            time.sleep(0.1)
        text = node.ctl("pod", "describe", "notag").stdout
        assert f'Failed to pull image "{image}": {image}: not found (manifest unknown)' in text
        assert f'Back-off pulling image "{image}"' in text and "Error: ErrImagePull" in text
        # the image appears: the next try after the back-off pulls it and the pod runs
        reg.push(f"docker-archive:{busybox_archive()}", image.split("/", 1)[1])
        node.wait("notag", running, timeout=60, what="running once the tag was pushed")


def test_registry_down_is_err_image_pull_with_a_clear_message(env):
    node, _, _ = env
    image = f"127.0.0.1:{DOWN_PORT}/busybox:1"
    with node.running(pod("down", [app("c", image)])):
        p = node.wait("down", lambda p: waiting(p).get("reason") == "ErrImagePull",
                      what="ErrImagePull")
        msg = waiting(p)["message"]
        assert msg == f"registry 127.0.0.1:{DOWN_PORT} refused the connection (is it running?)"


def test_never_pull_and_short_names_and_invalid_names(env):
    node, reg, _ = env
    node.ctl("image", "import", "busybox", busybox_archive())
    absent = f"{reg.host}/busybox:{unique('n')}"
    docs = [pod("never", [app("c", absent, imagePullPolicy="Never")]),
            # imported with `image import`: Never, and the short name's default (Always,
            # which a short name cannot be pulled for), both use it
            pod("neverok", [app("c", "busybox", imagePullPolicy="Never")]),
            pod("short", [app("c", "busybox")]),
            pod("noreg", [app("c", "nosuch:1")]),
            pod("badname", [app("c", "Bad/Name:1")])]
    try:
        for d in docs:
            node.run(d)
        p = node.wait("never", lambda p: waiting(p).get("reason") == "ErrImageNeverPull")
        assert waiting(p)["message"] == \
            f'Container image "{absent}" is not present with pull policy of Never'
        node.wait("neverok", running)
        node.wait("short", running)
        p = node.wait("noreg", lambda p: waiting(p).get("reason") == "ErrImagePull")
        assert "names no registry" in waiting(p)["message"] \
            and "podnetctl image import" in waiting(p)["message"], p
        p = node.wait("badname", lambda p: waiting(p).get("reason") == "InvalidImageName")
        assert "invalid reference format" in waiting(p)["message"] \
            or "must be lowercase" in waiting(p)["message"], p
        # `image import` under a registry name satisfies IfNotPresent without any pull
        local = f"{reg.host}/imported:7"
        node.ctl("image", "import", local, busybox_archive())
        node.run(pod("imported", [app("c", local)]))
        node.wait("imported", running)
        assert "Pulling image" not in node.ctl("pod", "describe", "imported").stdout
    finally:
        for d in docs + [{"metadata": {"name": "imported"}}]:
            node.rm(d["metadata"]["name"])


def test_always_pulls_again_and_picks_up_a_moved_tag(env, tmp_path):
    node, reg, _ = env
    name = f"app{unique()}"
    image = reg.push(f"docker-archive:{busybox_archive()}", f"{name}:latest")

    def marker(tar):
        from podnetd.runtime.busybox_image import add_entry
        add_entry(tar, "etc/moved", data=b"second push\n")
    second = busybox_variant(str(tmp_path / "v2.tar"), marker)
    check = "cat /etc/moved 2>/dev/null || echo first; exec sleep 3600"
    with node.running(pod("first", [app("c", image, check)])):
        p1 = node.wait("first", running)
        reg.push(f"docker-archive:{second}", f"{name}:latest")
        # :latest defaults to Always: a new pod pulls again and gets the new image
        with node.running(pod("second", [app("c", image, check)])):
            p2 = node.wait("second", running)
            assert node.logs("first").strip() == "first"
            assert node.logs("second").strip() == "second push"
            assert state_of(p1, "c")["imageID"] != state_of(p2, "c")["imageID"]
            assert node.ctl("pod", "describe", "second").stdout.count("Successfully pulled") == 1


def test_auth_file_credentials_and_unauthorized(env):
    node, _, auth_reg = env
    image = f"{auth_reg.host}/busybox:1"
    # the same registry under a name the auth file has no entry for: no credentials sent
    other = f"localhost:{AUTH_PORT}/busybox:1"
    with node.running(pod("authed", [app("c", image)])), \
            node.running(pod("noauth", [app("c", other)])):
        node.wait("authed", running, what="pulled with the auth file's credentials")
        p = node.wait("noauth", lambda p: waiting(p).get("reason") == "ErrImagePull")
        assert "unauthorized: authentication required" in waiting(p)["message"], p
        for text in (node.ctl("pod", "describe", "noauth").stdout, node.daemon.log()):
            assert PASSWORD not in text
            assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in text


def test_concurrent_pulls_of_one_image_share_one_pull(env):
    node, reg, _ = env
    image = reg.push(f"docker-archive:{busybox_archive()}", f"shared{unique()}:1")
    doc = pod("twins", [app("a", image), app("b", image)])
    with node.running(doc):
        node.wait("twins", lambda p: all("running" in state_of(p, n)["state"]
                                         for n in ("a", "b")))
        text = node.ctl("pod", "describe", "twins").stdout
        assert text.count(f'Successfully pulled image "{image}"') == 2, text
        assert node.daemon.log().count(f"pulled image {image} in") == 1


def test_pulled_layers_pass_the_store_checks(env, tmp_path):
    """A registry image whose layer breaks the store's rules is refused like an archive."""
    node, reg, _ = env

    def escape(tar):
        from podnetd.runtime.busybox_image import add_entry
        add_entry(tar, "../../escaped", data=b"x")
    bad = busybox_variant(str(tmp_path / "bad.tar"), escape)
    image = reg.push(f"docker-archive:{bad}", f"bad{unique()}:1")
    with node.running(pod("badlayer", [app("c", image)])):
        p = node.wait("badlayer", lambda p: waiting(p).get("reason") == "ErrImagePull")
        assert f"import image {image} from docker://{image}: layer 3" in waiting(p)["message"], p
    assert image not in node.ctl("image", "list").stdout
    r = node.ctl("image", "import", "badlocal:1", bad, check=False)
    assert r.returncode != 0 and "layer 3" in r.stderr


@contextlib.contextmanager
def silent_registry(netns: str, port: int):
    """A TCP server in the netns that accepts and never answers (a registry that hangs)."""
    code = ("import socket, time\n"
            f"s = socket.create_server(('127.0.0.1', {port}))\n"
            "conns = []\n"
            "while True:\n"
            "    conns.append(s.accept())\n")
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", PY, "-c", code],
                            stdin=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def processes_with(text: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
    return pids


def test_a_pod_removed_during_a_pull_ends_the_pull(env):
    node, _, _ = env
    image = f"127.0.0.1:{SILENT_PORT}/busybox:{unique('h')}"
    images_dir = os.path.join(node.daemon.state_dir, "runtime", "images")
    with silent_registry(node.netns, SILENT_PORT):
        path = os.path.join(node.workdir, "hung.yaml")
        with open(path, "w") as f:
            json.dump(pod("hung", [app("c", image)]), f)
        # `pod run` waits for the containers to start (at most a minute): in the background
        run = subprocess.Popen([PY, "-m", "podnetd.ctl.main", "pod", "run", "--socket",
                                node.socket, "-f", path], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while not processes_with(f"docker://{image}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_with(f"docker://{image}"), "skopeo never started"
        p = node.get("hung")
        assert waiting(p).get("reason") == "ContainerCreating" and p["status"]["phase"] == \
            "Pending", p
        node.rm("hung")
        assert "hung" not in node.ctl("pod", "ls").stdout
        out = run.communicate(timeout=60)[0]   # it answers once the pod is gone
        assert out.startswith("pod/hung created: "), out
        # the only waiter left: its pull is cancelled, skopeo killed, its directory removed
        deadline = time.monotonic() + 20
        while processes_with(f"docker://{image}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not processes_with(f"docker://{image}"), "skopeo outlived its pod"
        assert not [e for e in os.listdir(images_dir) if e.startswith(".import-")]

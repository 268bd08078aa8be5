"""What containers and images put on disk cannot get a pod out of its volumes, make podnetd
read the host's files, stall the daemon or exhaust the logs path: real runc, real CNI."""
import glob
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile

import pytest

from testlib import PY, REPO, unique
from runtime_lib import busybox_variant, container, pod, runc_ids, runtime_node, state_of
from podnetd.runtime import busybox_image as bb


@pytest.fixture(scope="module")
def node():
    with runtime_node("rh", "10.78.41.0/24") as n:
        yield n


@pytest.fixture
def host_dir():
    """A host directory no pod was given, holding a secret; and a 0777 one pods share."""
    d = tempfile.mkdtemp(prefix=f"{unique('hs')}-")
    os.makedirs(os.path.join(d, "secret"))
    with open(os.path.join(d, "secret", "host-secret"), "w") as f:
        f.write("HOST-SECRET-MARKER\n")
    os.makedirs(os.path.join(d, "shared"))
    os.chmod(os.path.join(d, "shared"), 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def waiting(p, name) -> dict:
    return state_of(p, name)["state"].get("waiting") or {}


def running(p, name) -> bool:
    return "running" in state_of(p, name)["state"]


def test_sub_path_links_out_of_the_volume_are_refused(node, host_dir):
    """CVE-2017-1002101's class: an init container leaves links in an emptyDir and in a
    shared hostPath; containers mounting them with subPath get CreateContainerConfigError,
    never the host's directory; a plain subPath works and a missing one is created."""
    secret, shared = os.path.join(host_dir, "secret"), os.path.join(host_dir, "shared")
    ups = "../" * 30
    attacker = container("attacker", f"ln -s {secret} /vol/abs; ln -s {ups} /vol/rel; "
                                     "mkdir -p /vol/real/d; echo inside > /vol/real/d/f; "
                                     "ln -s real /vol/inner; "
                                     f"ln -s {secret} /hp/abs; "
                                     f"ln -s {host_dir}/created-by-podnetd /hp/dangling",
                         volumeMounts=[{"name": "vol", "mountPath": "/vol"},
                                       {"name": "hp", "mountPath": "/hp"}])

    def victim(name, volume, sub, path="/escaped"):
        return container(name, f"ls -la {path}/ {path}/*; cat {path}/host-secret; "
                               "exec sleep 3600",
                         volumeMounts=[{"name": volume, "mountPath": path, "subPath": sub}])
    victims = {"abs": victim("abs", "vol", "abs"), "rel": victim("rel", "vol", "rel"),
               "chain": victim("chain", "vol", "inner/d"),
               "hp-abs": victim("hp-abs", "hp", "abs")}
    good = container("good", "cat /in/f; ls -ld /made; exec sleep 3600", volumeMounts=[
        {"name": "vol", "mountPath": "/in", "subPath": "real/d"},
        {"name": "vol", "mountPath": "/made", "subPath": "new/deeper"}])
    dangling = container("dangling", "exec sleep 3600", volumeMounts=[
        {"name": "file", "mountPath": "/cfg"}])
    doc = pod("escape", [*victims.values(), good, dangling], initContainers=[attacker],
              volumes=[{"name": "vol", "emptyDir": {}},
                       {"name": "hp", "hostPath": {"path": shared}},
                       {"name": "file", "hostPath": {"path": f"{shared}/dangling",
                                                     "type": "FileOrCreate"}}])
    with node.running(doc) as p:
        uid = p["metadata"]["uid"]
        p = node.wait("escape", lambda p: running(p, "good") and all(
            waiting(p, n).get("reason") == "CreateContainerConfigError"
            for n in [*victims, "dangling"]), what="victims refused, good running")
        for name in victims:
            msg = waiting(p, name)["message"]
            assert "failed to prepare subPath for volumeMount" in msg, msg
            assert "symbolic link" in msg, msg
            assert not [i for i in runc_ids() if i == f"pn-{uid[:12]}-{name}"]
            assert "HOST-SECRET-MARKER" not in node.logs("escape", "-c", name)
        assert "does not exist" in waiting(p, "dangling")["message"]
        assert not os.path.lexists(os.path.join(host_dir, "created-by-podnetd"))
        node.wait("escape", lambda p: "inside" in node.logs("escape", "-c", "good"),
                  what="good container output")
        assert "drwxrwxrwx" in node.logs("escape", "-c", "good")  # the volume's mode
        assert "Error: failed to prepare subPath" in node.ctl("pod", "describe",
                                                              "escape").stdout
    assert os.listdir(os.path.join(host_dir, "secret")) == ["host-secret"]


def test_sub_path_swapped_for_a_link_after_a_start_is_refused_on_restart(node):
    """The subPath is resolved at every start: a container that replaces its own subPath
    directory with a link to / is refused when it restarts, and the pod is not half-made."""
    doc = pod("swap", [
        container("swapper", "[ -e /vol/once ] && exec sleep 3600; touch /vol/once; "
                             "rm -rf /vol/sub; ln -s / /vol/sub; exit 1",
                  volumeMounts=[{"name": "vol", "mountPath": "/vol"}]),
        container("user", "cat /proc/self/mountinfo | grep -c sub; sleep 1; exit 1",
                  volumeMounts=[{"name": "vol", "mountPath": "/s", "subPath": "sub"}])],
        volumes=[{"name": "vol", "emptyDir": {}}])
    with node.running(doc):
        p = node.wait("swap", lambda p: waiting(p, "user").get(
            "reason") == "CreateContainerConfigError", what="refused after the swap")
        assert "symbolic link" in waiting(p, "user")["message"]


def _variant(node, name, top, user):
    path = os.path.join(node.workdir, f"{name}.tar")
    busybox_variant(path, top, user=user, tag=f"{name}:latest")
    node.ctl("image", "import", name, path)
    return name


def _unblock_fifos(workdir):
    """After a failure on a daemon that opened a FIFO (old code): a writer lets it go on."""
    for path in glob.glob(f"{workdir}/**/etc/passwd", recursive=True):
        try:
            if stat.S_ISFIFO(os.lstat(path).st_mode):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_fifo_passwd_does_not_stall_the_daemon():
    """An image whose /etc/passwd is a FIFO: while its pod starts, podnetd keeps answering
    (status, and a second pod through CNI), and the container gets a clear error."""
    with runtime_node("rf", "10.78.42.0/24") as n:
        try:
            _variant(n, "fifo", lambda t: bb.add_entry(t, "etc/passwd", kind=tarfile.FIFOTYPE),
                     "app")
            path = os.path.join(n.workdir, "fifo.yaml")
            import yaml
            with open(path, "w") as f:
                yaml.safe_dump(pod("fifo", [{"name": "c", "image": "fifo",
                                             "command": ["sleep", "3600"]}]), f)
            run = subprocess.Popen([PY, "-m", "podnetd.ctl.main", "pod", "run", "--socket",
                                    n.socket, "-f", path], cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
            try:
                # a hang of the daemon shows as a timeout here (no speed is measured)
                assert n.ctl("status", timeout=90).returncode == 0
                other = n.run(pod("other", [container("c", "exec sleep 3600")]))
                assert other["status"]["podIP"].startswith("10.78.42.")
                assert run.wait(timeout=90) == 0, run.stdout.read()
            except subprocess.TimeoutExpired:
                pytest.fail("podnetd stopped answering while a pod with a FIFO /etc/passwd "
                            "started")
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
            p = n.wait("fifo", lambda p: waiting(p, "c").get("reason") ==
                       "CreateContainerConfigError", what="config error")
            msg = waiting(p, "c")["message"]
            assert "unable to find user app" in msg and "not a regular file" in msg, msg
        finally:
            _unblock_fifos(n.workdir)


def test_passwd_link_to_a_host_file_is_not_followed(node, host_dir):
    """/etc/passwd as a link to a host file (absolute, or relative with enough '..') names
    no host user: the container gets "unable to find user"; a link that stays inside the
    image works, resolved as inside the container."""
    fake = os.path.join(host_dir, "secret", "passwd")
    with open(fake, "w") as f:
        f.write("app:x:4242:4242:HOST-SECRET-MARKER:/:/bin/sh\n")

    def link(target):
        return lambda t: bb.add_entry(t, "etc/passwd", kind=tarfile.SYMTYPE, link=target)
    _variant(node, "abs-link", link(fake), "app")
    _variant(node, "rel-link", link("../" * 20 + fake.lstrip("/")), "app")

    def inside(t):
        bb.add_entry(t, "etc/passwd.real", data=b"app:x:1234:1234::/:/bin/sh\n")
        bb.add_entry(t, "etc/passwd", kind=tarfile.SYMTYPE, link="/etc/passwd.real")
    _variant(node, "in-link", inside, "app")
    doc = pod("users", [{"name": n, "image": n, "command": ["sh", "-c", "id; exec sleep 3600"]}
                        for n in ("abs-link", "rel-link", "in-link")])
    with node.running(doc):
        p = node.wait("users", lambda p: running(p, "in-link") and all(
            waiting(p, n).get("reason") == "CreateContainerConfigError"
            for n in ("abs-link", "rel-link")), what="links refused")
        for name in ("abs-link", "rel-link"):
            assert "unable to find user app" in waiting(p, name)["message"]
        assert node.exec("users", "id", "-u", container="in-link").stdout.strip() == "1234"


def test_logs_over_4_mib_stream_whole(node):
    """A container writes 4.8 MB of output (700000 lines, about 26 MB of CRI log, so rotated
    files too): `pod logs` returns every line, in order, byte for byte."""
    doc = pod("big", [container("c", "seq 1 700000")], restartPolicy="Never")
    with node.running(doc):
        node.wait("big", lambda p: "terminated" in state_of(p, "c")["state"], timeout=300,
                  what="the writer to finish")
        want = "".join(f"{i}\n" for i in range(1, 700001))
        assert len(want) > 4 * 2**20
        out = node.ctl("pod", "logs", "big", timeout=600).stdout
        assert len(out) == len(want) and out == want
        assert node.ctl("pod", "logs", "big", "--tail", "3").stdout == "699998\n699999\n700000\n"


def test_logs_rotate_to_max_files_and_follow_across_rotation():
    """--container-log-max-size 16Ki --container-log-max-files 3: only three files remain,
    each rotated once it reached the size; `pod logs` shows the newest lines; `pod logs -f` started before the
    writing sees every line once, in order, across the rotations."""
    with runtime_node("rl", "10.78.43.0/24", extra=[
            "--container-log-max-size", "16Ki", "--container-log-max-files", "3"]) as n:
        script = ("echo ready; until [ -f /tmp/go ]; do sleep 0.1; done; i=0; "
                  "while [ $i -lt 3000 ]; do i=$((i+1)); echo line-$i-padding-padding; "
                  "[ $((i % 20)) = 0 ] && sleep 0.05; done; echo end")
        n.run(pod("rot", [container("c", script)], restartPolicy="Never"))
        n.wait("rot", lambda p: "ready" in n.logs("rot"), what="ready")
        follow = subprocess.Popen([PY, "-m", "podnetd.ctl.main", "pod", "logs", "--socket",
                                   n.socket, "-f", "rot"], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert follow.stdout.readline() == "ready\n"
            n.exec("rot", "touch", "/tmp/go")
            out, err = follow.communicate(timeout=300)
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.wait()
        want = [f"line-{i}-padding-padding" for i in range(1, 3001)] + ["end"]
        assert out.splitlines() == want, err
        uid = n.get("rot")["metadata"]["uid"]
        logs = glob.glob(f"{n.workdir}/state/runtime/pods/{uid}/logs/c/0.log*")
        assert sorted(os.path.basename(f) for f in logs) == ["0.log", "0.log.1", "0.log.2"]
        # podnetd rotates a log once it has reached the size (conmon writes it): the rotated
        # files are at least that big; how far over depends on the check period (0.1 s)
        assert all(os.path.getsize(f) >= 16 * 1024 for f in logs if not f.endswith(".log"))
        shown = n.logs("rot").splitlines()
        assert shown[-1] == "end" and shown == want[-len(shown):] and len(shown) < 1000
        r = n.ctl("pod", "logs", "rot", "--tail", "-5", check=False)
        assert r.returncode != 0 and "give a number of lines" in r.stderr


def test_image_links_at_mount_points_and_working_dir_stay_in_the_rootfs(node, host_dir):
    """An image whose /etc/hosts, /etc/resolv.conf, a volume's mountPath and its working
    directory are links to host paths: the pod's files are mounted inside the container's
    root (runc resolves destinations in it, podnet never writes into the rootfs), and nothing
    appears on or is read from the host."""
    target = os.path.join(host_dir, "secret")

    def links(t):
        bb.add_entry(t, "etc/hosts", kind=tarfile.SYMTYPE, link=f"{host_dir}/h/hosts")
        bb.add_entry(t, "etc/resolv.conf", kind=tarfile.SYMTYPE,
                link="../" * 20 + f"{host_dir[1:]}/r/resolv.conf")
        bb.add_entry(t, "data", kind=tarfile.SYMTYPE, link=target)
        bb.add_entry(t, "work", kind=tarfile.SYMTYPE, link=target)
    _variant(node, "mountlinks", links, "")
    doc = pod("mlinks", [{"name": "c", "image": "mountlinks", "workingDir": "/work/sub",
                          "command": ["sh", "-c", "pwd > out; echo written > /data/mark; "
                                                  "cat /etc/hosts; ls /data; exec sleep 3600"],
                          "volumeMounts": [{"name": "v", "mountPath": "/data"}]}],
              volumes=[{"name": "v", "emptyDir": {}}])
    with node.running(doc):
        node.wait("mlinks", lambda p: running(p, "c"))
        node.wait("mlinks", lambda p: "mark" in node.logs("mlinks"), what="output")
        assert "mlinks" in node.logs("mlinks")  # the pod's /etc/hosts
        assert node.exec("mlinks", "cat", "/data/mark").stdout == "written\n"
    assert sorted(os.listdir(target)) == ["host-secret"]
    assert sorted(os.listdir(host_dir)) == ["secret", "shared"]


def test_exec_output_is_bounded(node):
    """A command in a container (an exec probe, `pod exec`) that writes without end fills
    neither podnetd's memory nor a gRPC message: stdout is cut at 1 MiB, with a note."""
    doc = pod("chatty", [container("c", "exec sleep 3600")])
    with node.running(doc):
        node.wait("chatty", lambda p: running(p, "c"))
        r = node.ctl("pod", "exec", "chatty", "--timeout", "120", "--", "sh", "-c",
                     "head -c 8000000 /dev/zero | tr '\\0' x; echo done >&2", check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "x" * 2**20
        assert r.stderr == "done\n\n[podnetd: stdout cut at 1048576 bytes]\n"


def test_empty_dir_over_its_size_limit_evicts_the_pod(node):
    """emptyDir sizeLimit on disk, as kubelet enforces it: the pod is evicted (reason
    Evicted, phase Failed, the volume named in the event); a pod within its limit stays."""
    vol = {"name": "scratch", "emptyDir": {"sizeLimit": "4Mi"}}
    mount = [{"name": "scratch", "mountPath": "/scratch"}]
    hog = pod("hog-disk", [container("c", "dd if=/dev/zero of=/scratch/f bs=1M count=8; "
                                          "exec sleep 3600", volumeMounts=mount)],
              volumes=[vol])
    fine = pod("fine-disk", [container("c", "dd if=/dev/zero of=/scratch/f bs=1k count=100; "
                                            "exec sleep 3600", volumeMounts=mount)],
               volumes=[vol])
    with node.running(hog), node.running(fine):
        p = node.wait("hog-disk", lambda p: p["status"].get("reason") == "Evicted"
                      and p["status"]["phase"] == "Failed", what="eviction")
        assert state_of(p, "c")["state"]["terminated"]["exitCode"] == 137
        assert 'Usage of EmptyDir volume "scratch" exceeds the limit "4Mi"' in \
            node.ctl("pod", "describe", "hog-disk").stdout
        assert "Evicted" in node.ctl("pod", "ls").stdout
        assert node.get("fine-disk")["status"]["phase"] == "Running"

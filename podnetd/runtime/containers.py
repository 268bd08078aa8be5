"""Container creation (kubelet's generateContainerConfig, CRI-O's CreateContainer): the OCI
config of one container attempt: command and environment, the user (looked up in the image's
own files), capabilities and seccomp, the namespaces it joins, and its mounts (volumes,
subPaths and hostPaths pinned by fd), on a fresh writable layer.

Blocking (it reads image files and mounts): called in worker threads."""
import contextlib
import errno
import json
import os
import re
import shutil
import stat
import threading

from ..kernel.errors import KernelError
from . import host, manifest, seccomp, spec as ocispec, userdb
from .context import Context
from .errors import ContainerError
from .model import Ctr, Pod
from .sandbox import hostname

CONFIG_ERROR = "CreateContainerConfigError"


def expand(text: str, env: dict) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values ($$ escapes)."""
    return re.sub(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


class ContainerFactory:
    _volumes_lock = threading.Lock()  # two containers of a pod must not make one emptyDir twice

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.seccomp = seccomp.Profiles(ctx.cfg.seccomp_profile_root)

    def create(self, c: Ctr, image: dict, pause_pid: int) -> str:
        """A fresh rootfs and the attempt's config.json; returns the bundle directory."""
        rootfs = self.ctx.layout.ctr_dir(c, "rootfs")
        self._fresh_rootfs(c, image, rootfs)
        config = self._container_config(c, image, rootfs, pause_pid)
        bundle = self.ctx.layout.ctr_dir(c)
        with open(os.path.join(bundle, "config.json"), "w") as f:
            f.write(json.dumps(config))   # one shot: json.dump encodes in Python
        return bundle

    def _fresh_rootfs(self, c: Ctr, image: dict, rootfs: str) -> None:
        """Every start gets a fresh writable layer, as in kubelet."""
        host.umount(rootfs)
        for d in ("upper", "work"):
            shutil.rmtree(self.ctx.layout.ctr_dir(c, d), ignore_errors=True)
        host.mount_overlay([image["rootfs"]], self.ctx.layout.ctr_dir(c, "upper"),
                           self.ctx.layout.ctr_dir(c, "work"), rootfs)

    def _argv_env(self, c: Ctr, image: dict) -> tuple[list[str], list[str]]:
        cfg = image.get("config") or {}
        env: dict = {}
        for item in cfg.get("Env") or []:
            k, _, v = item.partition("=")
            env[k] = v
        env["HOSTNAME"] = hostname(c.pod)
        for e in c.spec.get("env") or []:
            env[e["name"]] = expand(e.get("value", ""), env)
        command, args = c.spec.get("command"), c.spec.get("args")
        if command:
            argv = command + (args or [])
        else:
            argv = (cfg.get("Entrypoint") or []) + (args if args is not None
                                                     else cfg.get("Cmd") or [])
        argv = [expand(a, env) for a in argv]
        if not argv:
            raise ContainerError("CreateContainerError",
                                 f"container {c.name}: no command (none in the image either)")
        return argv, [f"{k}={v}" for k, v in env.items()]

    def _user(self, c: Ctr, image: dict, rootfs: str) -> tuple[int, int]:
        """(uid, gid): runAsUser/runAsGroup, else the image's User, names looked up in the
        image's own /etc/passwd and /etc/group (see _lookup). Runs off the event loop."""
        sec = manifest.security(c.pod.spec, c.spec)
        uid, gid = 0, None
        image_user = (image.get("config") or {}).get("User") or ""
        if image_user:
            try:
                name, group = userdb.split_user(str(image_user))
                if "runAsUser" not in sec:
                    uid = userdb.numeric_id(name)
                    if uid is None:
                        uid = self._lookup(rootfs, "passwd", name)
                if group and "runAsGroup" not in sec:
                    gid = userdb.numeric_id(group)
                    if gid is None:
                        gid = self._lookup(rootfs, "group", group)
            except userdb.UserError as e:
                raise ContainerError(CONFIG_ERROR, str(e)) from None
        if "runAsUser" in sec:
            uid = sec["runAsUser"]
        if "runAsGroup" in sec:
            gid = sec["runAsGroup"]
        if gid is None:
            gid = 0 if uid == 0 else uid
        if sec.get("runAsNonRoot") and uid == 0:
            raise ContainerError(CONFIG_ERROR,
                                 "container has runAsNonRoot and image will run as root")
        return uid, gid

    @staticmethod
    def _lookup(rootfs: str, db: str, name: str) -> int:
        """The id of name in the image's /etc/passwd or /etc/group. The file is the image's:
        opened inside the rootfs (links resolved as in the container, never to the host's
        files), read only when it is a regular file of at most 1 MiB (a FIFO would block)."""
        what = "user" if db == "passwd" else "group"
        try:
            data = host.read_regular_beneath(rootfs, f"etc/{db}", userdb.DB_LIMIT)
        except host.UnsafePath as e:
            raise ContainerError(CONFIG_ERROR, f"unable to find {what} {name}: /etc/{db} in "
                                               f"the image: {e.strerror}") from None
        value = userdb.find_id(data, name)
        if value is None:
            raise ContainerError(CONFIG_ERROR, f"unable to find {what} {name}: no matching "
                                               f"entries in {db} file")
        return value

    def _mounts(self, c: Ctr) -> list[dict]:
        """The container's mounts. A subPath, and every hostPath, is opened and checked here and
        bind-mounted from that very fd onto a staging path under the pod's directory, which
        runc then mounts: runc never resolves a path a container can change (CVE-2017-1002101).
        Runs off the event loop; the lock keeps two containers of a pod from making the same
        emptyDir twice."""
        pod = c.pod
        etc = self.ctx.layout.pod_dir(pod, "etc")
        mounts = [ocispec.bind(self.ctx.layout.pod_dir(pod, "shm"), "/dev/shm"),
                  ocispec.bind(os.path.join(etc, "hosts"), "/etc/hosts"),
                  ocispec.bind(os.path.join(etc, "hostname"), "/etc/hostname"),
                  ocispec.bind(os.path.join(etc, "resolv.conf"), "/etc/resolv.conf")]
        volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
        pinned: list[str] = []
        try:
            with self._volumes_lock:
                for index, m in enumerate(c.spec.get("volumeMounts") or []):
                    vol = volumes[m["name"]]
                    source = self._volume_source(pod, vol)
                    if m.get("subPath") or "hostPath" in vol:
                        source = self._pin_volume(c, index, m, vol, source)
                        pinned.append(source)
                    mounts.append(ocispec.bind(source, m["mountPath"], bool(m.get("readOnly"))))
        except BaseException:
            for target in pinned:  # no half-made container: what this call mounted goes
                with contextlib.suppress(Exception):
                    host.umount(target)
            raise
        return mounts

    def _volume_source(self, pod: Pod, vol: dict) -> str:
        """The volume's root on the host, created when it should be (emptyDir, *OrCreate)."""
        if "hostPath" in vol:
            hp = vol["hostPath"]
            path, kind = hp["path"], hp.get("type") or ""
            try:
                if kind == "DirectoryOrCreate":
                    os.makedirs(path, mode=0o755, exist_ok=True)
                elif kind == "FileOrCreate":
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    # O_EXCL: a dangling link at path fails instead of creating its target
                    with contextlib.suppress(FileExistsError):
                        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
            except OSError as e:
                raise ContainerError(CONFIG_ERROR,
                                     f"hostPath {path}: cannot create: {e.strerror}") from None
            return path
        path = self.ctx.layout.pod_dir(pod, "volumes", vol["name"])
        ed = vol.get("emptyDir") or {}
        if ed.get("medium") == "Memory":
            size = ed.get("sizeLimit")
            host.mount_tmpfs(path, int(manifest.quantity(size, "")) if size else None)
        else:
            os.makedirs(path, mode=0o777, exist_ok=True)
            os.chmod(path, 0o777)
        return path

    def _pin_volume(self, c: Ctr, index: int, m: dict, vol: dict, root: str) -> str:
        """Open the volume's root (a hostPath: once, links followed as Kubernetes does; an
        emptyDir: ours, no link), then the subPath beneath it without any link, '..' or
        absolute path (creating missing directories with the volume's mode, as kubelet does),
        and bind-mount the result onto pods/<uid>/volume-subpaths/<volume>/<container>/<i>."""
        sub = m.get("subPath") or ""
        what = f"volumeMount {m['name']!r} of container {c.name!r}"
        target = self.ctx.layout.pod_dir(c.pod, "volume-subpaths", m["name"], c.name, str(index))
        host.umount(target)  # the previous start's
        fds = []
        try:
            try:
                fds.append(host.open_host_path(root) if "hostPath" in vol
                           else host.open_dir_nofollow(root))
            except OSError as e:
                if "hostPath" in vol and e.errno == errno.ENOENT:
                    raise ContainerError(CONFIG_ERROR, f"hostPath type check failed: {root} "
                                                       "does not exist") from None
                raise ContainerError(CONFIG_ERROR,
                                     f"{what}: volume {root}: {e.strerror}") from None
            if "hostPath" in vol:
                _check_host_path_kind(root, vol["hostPath"].get("type") or "",
                                      host.fd_kind(fds[0]))
            if sub:
                try:
                    fds.append(self._open_sub_path(fds[0], sub))
                except host.UnsafePath as e:
                    raise ContainerError(CONFIG_ERROR, f"failed to prepare subPath for {what}: "
                                                       f"subPath {sub!r}: {e.strerror}") from None
            is_dir = host.fd_kind(fds[-1]) == "directory"
            _make_mount_target(target, is_dir)
            host.bind_fd(fds[-1], target)
        except (OSError, KernelError) as e:
            raise ContainerError(CONFIG_ERROR, f"{what}: cannot mount "
                                               f"{root}{'/' + sub if sub else ''}: {e}") from None
        finally:
            for fd in fds:
                os.close(fd)
        return target

    @staticmethod
    def _open_sub_path(root_fd: int, sub: str) -> int:
        try:
            return host.open_beneath(root_fd, sub)
        except host.UnsafePath as e:
            if e.errno != errno.ENOENT:
                raise
        if host.fd_kind(root_fd) != "directory":
            raise host.UnsafePath(errno.ENOTDIR, sub, "the volume is not a directory")
        host.make_dirs_beneath(root_fd, sub, stat.S_IMODE(os.fstat(root_fd).st_mode))
        return host.open_beneath(root_fd, sub)

    def _container_config(self, c: Ctr, image: dict, rootfs: str, pause_pid: int) -> dict:
        pod = c.pod
        sec = manifest.security(pod.spec, c.spec)
        caps = sec.get("capabilities") or {}
        privileged = bool(sec.get("privileged"))
        argv, env = self._argv_env(c, image)
        uid, gid = self._user(c, image, rootfs)
        capset = ocispec.capabilities(caps.get("add") or [], caps.get("drop") or [], privileged,
                                      host.bounding_set())
        try:
            profile = self.seccomp.oci(sec, privileged, capset)
        except seccomp.ProfileError as e:
            raise ContainerError("CreateContainerError", str(e)) from None
        return ocispec.container_spec(
            rootfs=rootfs, args=argv, env=env,
            cwd=c.spec.get("workingDir") or (image.get("config") or {}).get("WorkingDir") or "/",
            uid=uid, gid=gid, groups=sec.get("supplementalGroups"), seccomp=profile,
            caps=capset,
            readonly_root=bool(sec.get("readOnlyRootFilesystem")),
            no_new_privs=sec.get("allowPrivilegeEscalation") is False,
            privileged=privileged, hostname=None,
            namespaces=self._join_namespaces(pod, pause_pid),
            mounts=self._mounts(c), cgroups_path=c.cgroups_path,
            res=ocispec.resources(manifest.cpu_millis(c.spec, "limits"),
                                  manifest.cpu_millis(c.spec, "requests"),
                                  manifest.memory_bytes(c.spec), privileged),
            annotations={"io.kubernetes.pod.name": pod.name,
                         "io.kubernetes.container.name": c.name})

    def _join_namespaces(self, pod: Pod, pid: int) -> list[dict]:
        if not pid:
            raise ContainerError("CreateContainerError", "the pause container is not running")
        ns = f"/proc/{pid}/ns"
        return ocispec.namespaces(
            net=None if pod.host_network else host.netns_path(pod.netns),
            ipc=f"{ns}/ipc", uts=None if pod.host_network else f"{ns}/uts",
            pid=f"{ns}/pid" if pod.spec.get("shareProcessNamespace") else "")


def _check_host_path_kind(path: str, want: str, kind: str) -> None:
    """kubelet's hostPath type checks, on the object that is then mounted."""
    need = {"Directory": "directory", "DirectoryOrCreate": "directory", "File": "file",
            "FileOrCreate": "file"}.get(want)
    if need and kind != need:
        raise ContainerError(CONFIG_ERROR, f"hostPath type check failed: {path} is not a {need}")


def _make_mount_target(target: str, is_dir: bool) -> None:
    """An empty directory or file at target (in our own tree), of the type to be mounted."""
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(target) != is_dir or os.path.islink(target):
            if os.path.isdir(target) and not os.path.islink(target):
                os.rmdir(target)
            else:
                os.unlink(target)
    if is_dir:
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))



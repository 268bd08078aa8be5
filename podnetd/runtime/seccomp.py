"""Seccomp for containers: the profile a container gets, and its conversion from the
containers/common (podman, docker) profile format to the OCI runtime spec's linux.seccomp.

- RuntimeDefault is /usr/share/containers/seccomp.json, shipped by Debian's
  golang-github-containers-common for podman. It is podnet's default when a manifest sets no
  seccompProfile (Kubernetes' kubelet defaults to Unconfined unless run with SeccompDefault;
  podnet behaves as a kubelet with SeccompDefault on). Privileged containers run Unconfined,
  as in Kubernetes (containerd and CRI-O skip seccomp for them).
- Localhost names a file below the profile root (`--seccomp-profile-root`, default
  /var/lib/podnet/seccomp, as kubelet's `<root-dir>/seccomp`), in the same format.
- The conversion is podman's (containers/common pkg/seccomp setupSeccomp): the archMap entry
  of the host's architecture gives `architectures`; a syscall rule whose includes/excludes
  name capabilities, architectures or a minimum kernel is kept or dropped by the container's
  bounding capabilities, the host's architecture and kernel.

Everything but read_profile_file is pure."""
import json
import os
import platform
import stat

DEFAULT_PROFILE = "/usr/share/containers/seccomp.json"
DEFAULT_PROFILE_ROOT = "/var/lib/podnet/seccomp"
MAX_PROFILE_BYTES = 1 << 20

ACTIONS = {"SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
           "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG"}
OPERATORS = {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
             "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"}
FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
         "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"}
# uname machine -> libseccomp's native arch name (the names includes/excludes use)
NATIVE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
               "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86", "armv7l": "arm",
               "armv6l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
               "mips64": "mips64", "loongarch64": "loong64"}
# native arch -> the archMap entry podman picks (containers/common nativeToSeccomp)
NATIVE_TO_SECCOMP = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64",
                     "mips64": "SCMP_ARCH_MIPS64", "mips64n32": "SCMP_ARCH_MIPS64N32",
                     "mipsel64": "SCMP_ARCH_MIPSEL64", "mipsel64n32": "SCMP_ARCH_MIPSEL64N32",
                     "s390x": "SCMP_ARCH_S390X"}


class ProfileError(Exception):
    """A profile that cannot be used; the message says which file and why."""


def host_arch() -> str:
    machine = platform.machine()
    return NATIVE_ARCH.get(machine, machine)


def host_kernel() -> tuple[int, int]:
    parts = platform.release().split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


def localhost_path(root: str, relative: str) -> str:
    """A Localhost profile's file: `relative` below `root`, never outside it."""
    if not relative or relative.startswith("/") or ".." in relative.split("/") \
            or "\0" in relative:
        raise ProfileError(f"localhostProfile {relative!r}: must be a relative path without "
                           "'..'")
    path = os.path.normpath(os.path.join(root, relative))
    if os.path.commonpath([os.path.normpath(root), path]) != os.path.normpath(root):
        raise ProfileError(f"localhostProfile {relative!r}: outside {root}")
    return path


def read_profile_file(path: str, root: str | None = None) -> bytes:
    """The file's bytes: a regular file (a FIFO cannot block the daemon: opened non-blocking
    and checked before any read), at most MAX_PROFILE_BYTES, and with `root`, a file whose
    resolved path stays inside root (a symlink cannot lead out)."""
    try:
        if root is not None:
            real_root = os.path.realpath(root)
            real = os.path.realpath(path)
            if os.path.commonpath([real_root, real]) != real_root:
                raise ProfileError(f"seccomp profile {path}: resolves outside {root}")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ProfileError(f"seccomp profile {path}: not found") from None
    except OSError as e:
        raise ProfileError(f"seccomp profile {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProfileError(f"seccomp profile {path}: not a regular file")
        if st.st_size > MAX_PROFILE_BYTES:
            raise ProfileError(f"seccomp profile {path}: larger than {MAX_PROFILE_BYTES} bytes")
        data = os.read(fd, MAX_PROFILE_BYTES + 1)
        if len(data) > MAX_PROFILE_BYTES:
            raise ProfileError(f"seccomp profile {path}: larger than {MAX_PROFILE_BYTES} bytes")
        return data
    finally:
        os.close(fd)


def _member(value, allowed: set) -> bool:
    return isinstance(value, str) and value in allowed


def _uint(value, what: str, bits: int = 64) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise ProfileError(f"{what}: must be an unsigned integer, got {value!r:.40}")
    return value


def _strings(value, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ProfileError(f"{what}: must be a list of strings")
    return value


def _kernel(value, what: str) -> tuple[int, int] | None:
    if value in (None, ""):
        return None
    try:
        major, minor = str(value).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        raise ProfileError(f"{what}: {value!r:.40} is not a kernel version like 5.8") from None


def _filter(rule: dict, what: str) -> dict:
    if rule is None:
        rule = {}
    if not isinstance(rule, dict):
        raise ProfileError(f"{what}: must be an object")
    return {"caps": _strings(rule.get("caps"), f"{what}.caps"),
            "arches": _strings(rule.get("arches"), f"{what}.arches"),
            "minKernel": _kernel(rule.get("minKernel"), f"{what}.minKernel")}


def _applies(includes: dict, excludes: dict, caps: set, arch: str,
             kernel: tuple[int, int]) -> bool:
    """containers/common's rule filter, in its order."""
    if excludes["arches"] and arch in excludes["arches"]:
        return False
    if any(c in caps for c in excludes["caps"]):
        return False
    if excludes["minKernel"] and kernel >= excludes["minKernel"]:
        return False
    if includes["arches"] and arch not in includes["arches"]:
        return False
    if any(c not in caps for c in includes["caps"]):
        return False
    if includes["minKernel"] and kernel < includes["minKernel"]:
        return False
    return True


def _syscall(entry, i: int) -> tuple[dict, dict, dict]:
    what = f"syscalls[{i}]"
    if not isinstance(entry, dict):
        raise ProfileError(f"{what}: must be an object")
    names = _strings(entry.get("names"), f"{what}.names")
    if entry.get("name"):
        if names:
            raise ProfileError(f"{what}: 'name' and 'names' were both specified")
        if not isinstance(entry["name"], str):
            raise ProfileError(f"{what}.name: must be a string")
        names = [entry["name"]]
    action = entry.get("action")
    if not _member(action, ACTIONS):
        raise ProfileError(f"{what}.action: unsupported {action!r:.40}")
    out = {"names": names, "action": action}
    if entry.get("errnoRet") is not None:
        out["errnoRet"] = _uint(entry["errnoRet"], f"{what}.errnoRet", 32)
    args = entry.get("args") or []
    if not isinstance(args, list):
        raise ProfileError(f"{what}.args: must be a list")
    converted = []
    for j, arg in enumerate(args):
        where = f"{what}.args[{j}]"
        if not isinstance(arg, dict):
            raise ProfileError(f"{where}: must be an object")
        if not _member(arg.get("op"), OPERATORS):
            raise ProfileError(f"{where}.op: unsupported {arg.get('op')!r:.40}")
        converted.append({"index": _uint(arg.get("index"), f"{where}.index", 3),
                          "value": _uint(arg.get("value", 0), f"{where}.value"),
                          "valueTwo": _uint(arg.get("valueTwo", 0), f"{where}.valueTwo"),
                          "op": arg["op"]})
    if converted:
        out["args"] = converted
    return out, _filter(entry.get("includes"), f"{what}.includes"), \
        _filter(entry.get("excludes"), f"{what}.excludes")


def to_oci(profile, caps: list[str], arch: str, kernel: tuple[int, int]) -> dict | None:
    """linux.seccomp for a container with these bounding capabilities, on this host; None
    when the profile asks for no filtering (no default action and no rules, as podman)."""
    if not isinstance(profile, dict):
        raise ProfileError("must be a JSON object")
    syscalls = profile.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise ProfileError("syscalls: must be a list")
    if not profile.get("defaultAction") and not syscalls:
        return None
    if not _member(profile.get("defaultAction"), ACTIONS):
        raise ProfileError(f"defaultAction: unsupported {profile.get('defaultAction')!r:.40}")
    if profile.get("listenerPath"):
        raise ProfileError("listenerPath (a seccomp agent) is not supported")
    if profile.get("architectures") and profile.get("archMap"):
        raise ProfileError("'architectures' and 'archMap' were both specified")
    out: dict = {"defaultAction": profile["defaultAction"]}
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = _uint(profile["defaultErrnoRet"], "defaultErrnoRet", 32)
    architectures = _strings(profile.get("architectures"), "architectures")
    arch_map = profile.get("archMap") or []
    if not isinstance(arch_map, list):
        raise ProfileError("archMap: must be a list")
    for k, entry in enumerate(arch_map):
        if not isinstance(entry, dict) or not isinstance(entry.get("architecture"), str):
            raise ProfileError(f"archMap[{k}]: must be an object with an architecture")
        if entry["architecture"] == NATIVE_TO_SECCOMP.get(arch):
            architectures = [entry["architecture"],
                             *_strings(entry.get("subArchitectures"),
                                       f"archMap[{k}].subArchitectures")]
            break
    if architectures:
        out["architectures"] = architectures
    flags = _strings(profile.get("flags"), "flags")
    if any(f not in FLAGS for f in flags):
        raise ProfileError(f"flags: unsupported {[f for f in flags if f not in FLAGS]}")
    if flags:
        out["flags"] = flags
    capset = set(caps)
    rules = []
    for i, entry in enumerate(syscalls):
        rule, includes, excludes = _syscall(entry, i)
        if rule["names"] and _applies(includes, excludes, capset, arch, kernel):
            rules.append(rule)
    out["syscalls"] = rules
    return out


def parse_profile(data: bytes, path: str) -> dict:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ProfileError(f"seccomp profile {path}: not JSON: {e}") from None


def profile_for(sec: dict, privileged: bool) -> tuple[str, str | None]:
    """(type, localhostProfile) a container runs with, from its merged securityContext."""
    if privileged:
        return "Unconfined", None
    profile = sec.get("seccompProfile") or {}
    kind = profile.get("type") or "RuntimeDefault"
    return kind, profile.get("localhostProfile") if kind == "Localhost" else None


class Profiles:
    """Loads the profiles containers ask for (files cached by path, size and mtime)."""

    def __init__(self, root: str = DEFAULT_PROFILE_ROOT, default: str = DEFAULT_PROFILE):
        self.root, self.default = root, default
        self._cache: dict[str, tuple[tuple, dict]] = {}

    def _load(self, path: str, root: str | None) -> dict:
        try:
            st = os.stat(path)
            key = (st.st_size, st.st_mtime_ns, st.st_ino)
        except OSError:
            key = None
        cached = self._cache.get(path)
        if cached and key and cached[0] == key:
            return cached[1]
        profile = parse_profile(read_profile_file(path, root), path)
        if key:
            self._cache[path] = (key, profile)
        return profile

    def oci(self, sec: dict, privileged: bool, caps: list[str]) -> dict | None:
        """linux.seccomp for a container, or None (Unconfined); ProfileError with context."""
        kind, local = profile_for(sec, privileged)
        if kind == "Unconfined":
            return None
        if kind == "RuntimeDefault":
            path, root = self.default, None
        else:
            path, root = localhost_path(self.root, local or ""), self.root
        profile = self._load(path, root)
        try:
            return to_oci(profile, caps, host_arch(), host_kernel())
        except ProfileError as e:
            raise ProfileError(f"seccomp profile {path}: {e}") from None

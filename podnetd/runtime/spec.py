"""OCI runtime spec (config.json) for the pause container and for pod containers. Pure logic:
the inputs are plain values, the output is a dict that runc/crun accept."""

DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
ALL_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
            "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
            "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
            "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
            "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
            "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
            "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
            "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
            "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]
MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
          "/proc/scsi"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
CPU_PERIOD = 100000
MIN_SHARES, MAX_SHARES = 2, 262144      # kubelet's MilliCPUToShares bounds (the kernel's)
MAX_QUOTA_US = (1 << 44) - 1            # the kernel's max_cfs_runtime (MAX_BW), ~203 days


def cap_name(cap: str) -> str:
    cap = cap.upper()
    return cap if cap.startswith("CAP_") else "CAP_" + cap


def capabilities(add: list[str], drop: list[str], privileged: bool,
                 bounding: int = (1 << 64) - 1) -> list[str]:
    """The container's capability set. ALL_CAPS is in kernel numbering order; privileged means
    every capability podnetd itself holds (its bounding set: a host may be a container)."""
    if privileged:
        return [c for i, c in enumerate(ALL_CAPS) if bounding >> i & 1]
    drops = {cap_name(c) for c in drop}
    caps = [] if "CAP_ALL" in drops else [c for c in DEFAULT_CAPS if c not in drops]
    adds = {cap_name(c) for c in add}
    caps += ALL_CAPS if "CAP_ALL" in adds else [c for c in sorted(adds) if c not in caps]
    return list(dict.fromkeys(caps))


def base_mounts(privileged: bool) -> list[dict]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev"] + ([] if privileged else ["ro"])},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]


def sandbox_mounts() -> list[dict]:
    """The pause container's: it only holds the namespaces and reaps, so it gets no cgroup tree
    (on a v1 host, a mount and a remount per controller for the OCI runtime), no devpts and no
    mqueue (the pod's containers mount their own in the shared IPC namespace)."""
    keep = {"/proc", "/dev", "/sys"}
    return [m for m in base_mounts(False) if m["destination"] in keep]


def bind(source: str, destination: str, readonly: bool = False) -> dict:
    return {"destination": destination, "type": "bind", "source": source,
            "options": ["rbind", "rprivate"] + (["ro"] if readonly else ["rw"])}


def resources(cpu_limit_millis: int | None, cpu_request_millis: int | None,
              memory_limit: int | None, privileged: bool) -> dict:
    res: dict = {"devices": [{"allow": privileged, "access": "rwm"}]}
    # The kubelet's MilliCPUToShares: a container that requests no CPU gets the minimum (2), so
    # best-effort work, and the OCI runtime's init inside its cgroup, yield to the node's agents
    # and to the pods that asked for CPU; a limit without a request is the request (the API's
    # defaulting).
    request = cpu_request_millis if cpu_request_millis is not None else cpu_limit_millis
    cpu: dict = {"shares": min(MAX_SHARES, max(MIN_SHARES, (request or 0) * 1024 // 1000))}
    quota = max(1000, cpu_limit_millis * CPU_PERIOD // 1000) if cpu_limit_millis else None
    # a limit beyond what the kernel can enforce (Kubernetes caps quantities at 2^63-1, not
    # at the kernel's bound) is no limit: runc would refuse the number
    if quota is not None and quota <= MAX_QUOTA_US:
        cpu["quota"] = quota
        cpu["period"] = CPU_PERIOD
    res["cpu"] = cpu
    if memory_limit:
        # swap equal to the limit: no swap beyond it, so a hog meets the OOM killer
        res["memory"] = {"limit": memory_limit, "swap": memory_limit}
    return res


def container_spec(*, rootfs: str, args: list[str], env: list[str], cwd: str, uid: int, gid: int,
                   groups: list[int] | None = None, caps: list[str], readonly_root: bool,
                   no_new_privs: bool, privileged: bool, hostname: str | None,
                   namespaces: list[dict], mounts: list[dict], cgroups_path: str,
                   res: dict, annotations: dict | None = None,
                   seccomp: dict | None = None, base: list[dict] | None = None) -> dict:
    """`seccomp` is linux.seccomp (seccomp.Profiles.oci), None for Unconfined; `base` the
    mounts before `mounts` (default base_mounts)."""
    linux: dict = {
        "namespaces": namespaces,
        "cgroupsPath": cgroups_path,
        "resources": res,
    }
    if seccomp is not None:
        linux["seccomp"] = seccomp
    if not privileged:
        linux["maskedPaths"] = MASKED
        linux["readonlyPaths"] = READONLY
    spec = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, **({"additionalGids": groups} if groups else {})},
            "args": args,
            "env": env,
            "cwd": cwd or "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": no_new_privs,
        },
        "root": {"path": rootfs, "readonly": readonly_root},
        "mounts": [*(base_mounts(privileged) if base is None else base), *mounts],
        "linux": linux,
        "annotations": annotations or {},
    }
    if hostname is not None:
        spec["hostname"] = hostname
    return spec


def namespaces(*, net: str | None, ipc: str | None, uts: str | None,
               pid: str | None) -> list[dict]:
    """Namespace entries; a path joins an existing one, "" asks for a new one, None omits it
    (stays in podnetd's: only the network with hostNetwork)."""
    out = [{"type": "mount"}]
    for kind, value in (("network", net), ("ipc", ipc), ("uts", uts), ("pid", pid)):
        if value is None:
            continue
        out.append({"type": kind, **({"path": value} if value else {})})
    return out

"""Pod Security Admission: the Pod Security Standards' levels (privileged, baseline,
restricted) as k8s.io/pod-security-admission evaluates them. Pure logic.

    violations = evaluate(namespace.labels, pod)        # [] when the pod is allowed
    message = forbidden_message(namespace.labels, pod)  # kube-apiserver's refusal, or None

The level and version come from the Namespace's labels `pod-security.kubernetes.io/enforce` and
`pod-security.kubernetes.io/enforce-version` ("latest" or "v1.N"; an invalid level is enforced
as restricted, an invalid version as latest, as PolicyToEvaluate does; no label = privileged).
Checks run in Kubernetes' order (baseline check ids sorted, then restricted ones; a restricted
check replaces the baseline check it overrides) and report Kubernetes' reasons and details,
e.g. `allowPrivilegeEscalation != false (container "app" must set
securityContext.allowPrivilegeEscalation=false)`. Each check reads the pod as Kubernetes'
JSON (dicts) and tolerates any shape. Checks of fields podnet's manifests refuse
(appArmorProfile, seLinuxOptions, procMount, sysctls, windowsHostProcess, hostUsers) are not
implemented: a pod with those never gets this far."""
import re

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
ENFORCE_VERSION_LABEL = "pod-security.kubernetes.io/enforce-version"
LEVELS = ("privileged", "baseline", "restricted")
VERSION = re.compile(r"v1\.([0-9]|[1-9][0-9]*)")
LATEST = 10**6   # "latest" compares newer than any v1.N

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL",
                         "MKNOD", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID",
                         "SYS_CHROOT"}
# volume sources the restricted level allows; every other source is reported by its name
RESTRICTED_OK_VOLUMES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                         "persistentVolumeClaim", "projected", "secret", "image")
KNOWN_VOLUME_SOURCES = (
    "hostPath", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "nfs", "iscsi",
    "glusterfs", "rbd", "flexVolume", "cinder", "cephfs", "flocker", "fc", "azureFile",
    "vsphereVolume", "quobyte", "azureDisk", "photonPersistentDisk", "portworxVolume", "scaleIO",
    "storageos")
SECCOMP_ANNOTATION_POD = "seccomp.security.alpha.kubernetes.io/pod"
SECCOMP_ANNOTATION_CONTAINER = "container.seccomp.security.alpha.kubernetes.io/"


# -- helpers with Kubernetes' wording ------------------------------------------------------

def _plural(singular: str, plural: str, n: int) -> str:
    return singular if n == 1 else plural


def _quote(items) -> str:
    return ", ".join(f'"{x}"' for x in items)


def _items(value) -> list:
    """A list field as a list (anything else, as from a malformed pod, as empty)."""
    return value if isinstance(value, list) else []


def _dicts(value) -> list[dict]:
    return [x for x in _items(value) if isinstance(x, dict)]


def _strs(value) -> list[str]:
    return [x if isinstance(x, str) else str(x) for x in _items(value)]


def _containers(spec: dict) -> list[dict]:
    """initContainers, containers, ephemeralContainers: visitContainers' order."""
    out = []
    for group in ("initContainers", "containers", "ephemeralContainers"):
        out += _dicts(spec.get(group))
    return out


def _sc(obj: dict) -> dict:
    sc = obj.get("securityContext")
    return sc if isinstance(sc, dict) else {}


def _caps(container: dict) -> dict | None:
    caps = _sc(container).get("capabilities")
    return caps if isinstance(caps, dict) else None


# -- baseline checks -----------------------------------------------------------------------

def _host_namespaces(meta, spec):
    found = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k) is True]
    return ("host namespaces", ", ".join(found)) if found else None


def _privileged(meta, spec):
    bad = [c.get("name") for c in _containers(spec) if _sc(c).get("privileged") is True]
    if bad:
        return ("privileged", f"{_plural('container', 'containers', len(bad))} {_quote(bad)} "
                              "must not set securityContext.privileged=true")
    return None


def _capabilities_baseline(meta, spec):
    bad, caps = [], set()
    for c in _containers(spec):
        added = _strs((_caps(c) or {}).get("add"))
        extra = [a for a in added if a not in BASELINE_CAPABILITIES]
        if extra:
            bad.append(c.get("name"))
            caps.update(extra)
    if bad:
        return ("non-default capabilities",
                f"{_plural('container', 'containers', len(bad))} {_quote(bad)} must not "
                f"include {_quote(sorted(caps))} in securityContext.capabilities.add")
    return None


def _host_path_volumes(meta, spec):
    bad = [v.get("name") for v in _dicts(spec.get("volumes")) if v.get("hostPath") is not None]
    if bad:
        return ("hostPath volumes", f"{_plural('volume', 'volumes', len(bad))} {_quote(bad)}")
    return None


def _host_ports(meta, spec):
    bad, ports = [], set()
    for c in _containers(spec):
        used = [p.get("hostPort") for p in _dicts(c.get("ports")) if p.get("hostPort")]
        if used:
            bad.append(c.get("name"))
            ports.update(str(p) for p in used)
    if bad:
        return ("hostPort", f"{_plural('container', 'containers', len(bad))} {_quote(bad)} "
                            f"{_plural('uses', 'use', len(bad))} "
                            f"{_plural('hostPort', 'hostPorts', len(ports))} "
                            f"{', '.join(sorted(ports))}")
    return None


def _probe_hosts(handler) -> list[str]:
    if not isinstance(handler, dict):
        return []
    return [str(h["host"]) for h in (handler.get("httpGet"), handler.get("tcpSocket"))
            if isinstance(h, dict) and h.get("host")]


def _host_probes(meta, spec):
    bad, hosts = [], set()
    for c in _containers(spec):
        lifecycle = c.get("lifecycle") if isinstance(c.get("lifecycle"), dict) else {}
        found = [h for handler in (c.get("livenessProbe"), c.get("readinessProbe"),
                                   c.get("startupProbe"), lifecycle.get("postStart"),
                                   lifecycle.get("preStop")) for h in _probe_hosts(handler)]
        if found:
            bad.append(c.get("name"))
            hosts.update(found)
    if bad:
        bad = sorted(set(bad))
        return ("probe or lifecycle host",
                f"{_plural('container', 'containers', len(bad))} {_quote(bad)} "
                f"{_plural('uses', 'use', len(bad))} "
                f"{_plural('probe or lifecycle host', 'probe or lifecycle hosts', len(hosts))} "
                f"{_quote(sorted(hosts))}")
    return None


def _seccomp_type(obj: dict):
    profile = _sc(obj).get("seccompProfile")
    return profile.get("type") if isinstance(profile, dict) else None


def _has_seccomp(obj: dict) -> bool:
    return isinstance(_sc(obj).get("seccompProfile"), dict)


def _seccomp_bad_setters(spec, *, implicit: bool):
    """(explicit bad setters, bad values, containers with nothing set and no valid pod value)"""
    setters, values, implicit_bad = [], set(), []
    pod_valid = False
    if _has_seccomp(spec):
        if _seccomp_type(spec) in ("RuntimeDefault", "Localhost"):
            pod_valid = True
        else:
            setters.append("pod")
            values.add(str(_seccomp_type(spec) or ""))
    explicit = []
    for c in _containers(spec):
        if _has_seccomp(c):
            if _seccomp_type(c) not in ("RuntimeDefault", "Localhost"):
                explicit.append(c.get("name"))
                values.add(str(_seccomp_type(c) or ""))
        elif implicit and not pod_valid:
            implicit_bad.append(c.get("name"))
    if explicit:
        setters.append(f"{_plural('container', 'containers', len(explicit))} {_quote(explicit)}")
    return setters, values, implicit_bad


def _seccomp_baseline(meta, spec):
    setters, values, _ = _seccomp_bad_setters(spec, implicit=False)
    if setters:
        return ("seccompProfile", f"{' and '.join(setters)} must not set securityContext."
                                  f"seccompProfile.type to {_quote(sorted(values))}")
    return None


def _seccomp_annotations(meta, spec):
    """Before v1.19 the baseline read the alpha annotations instead of the field."""
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}

    def ok(v):
        return v in ("runtime/default", "docker/default") or str(v).startswith("localhost/")
    bad = set()
    if SECCOMP_ANNOTATION_POD in annotations and not ok(annotations[SECCOMP_ANNOTATION_POD]):
        bad.add(f'{SECCOMP_ANNOTATION_POD}="{annotations[SECCOMP_ANNOTATION_POD]}"')
    for c in _containers(spec):
        key = SECCOMP_ANNOTATION_CONTAINER + str(c.get("name"))
        if key in annotations and not ok(annotations[key]):
            bad.add(f'{key}="{annotations[key]}"')
    if bad:
        return ("seccompProfile", f"forbidden {_plural('annotation', 'annotations', len(bad))} "
                                  f"{', '.join(sorted(bad))}")
    return None


# -- restricted checks ---------------------------------------------------------------------

def _allow_privilege_escalation(meta, spec):
    bad = [c.get("name") for c in _containers(spec)
           if _sc(c).get("allowPrivilegeEscalation") is not False]
    if bad:
        return ("allowPrivilegeEscalation != false",
                f"{_plural('container', 'containers', len(bad))} {_quote(bad)} must set "
                "securityContext.allowPrivilegeEscalation=false")
    return None


def _capabilities_restricted(meta, spec):
    missing_drop, adding, caps = [], [], set()
    for c in _containers(spec):
        capabilities = _caps(c)
        if capabilities is None:
            missing_drop.append(c.get("name"))
            continue
        if "ALL" not in _items(capabilities.get("drop")):
            missing_drop.append(c.get("name"))
        extra = [a for a in _strs(capabilities.get("add")) if a != "NET_BIND_SERVICE"]
        if extra:
            adding.append(c.get("name"))
            caps.update(extra)
    details = []
    if missing_drop:
        details.append(f"{_plural('container', 'containers', len(missing_drop))} "
                       f'{_quote(missing_drop)} must set securityContext.capabilities.drop=["ALL"]')
    if adding:
        details.append(f"{_plural('container', 'containers', len(adding))} {_quote(adding)} "
                       f"must not include {_quote(sorted(caps))} in "
                       "securityContext.capabilities.add")
    return ("unrestricted capabilities", "; ".join(details)) if details else None


def _restricted_volumes(meta, spec):
    bad, kinds = [], set()
    for v in _dicts(spec.get("volumes")):
        if any(v.get(k) is not None for k in RESTRICTED_OK_VOLUMES):
            continue
        bad.append(v.get("name"))
        kinds.add(next((k for k in KNOWN_VOLUME_SOURCES if v.get(k) is not None), "unknown"))
    if bad:
        return ("restricted volume types",
                f"{_plural('volume', 'volumes', len(bad))} {_quote(bad)} "
                f"{_plural('uses', 'use', len(bad))} "
                f"{_plural('restricted volume type', 'restricted volume types', len(kinds))} "
                f"{_quote(sorted(kinds))}")
    return None


def _run_as_non_root(meta, spec):
    setters, pod_ok = [], False
    if "runAsNonRoot" in _sc(spec) and _sc(spec)["runAsNonRoot"] is not None:
        if _sc(spec)["runAsNonRoot"] is False:
            setters.append("pod")
        else:
            pod_ok = True
    explicit, implicit = [], []
    for c in _containers(spec):
        value = _sc(c).get("runAsNonRoot")
        if value is not None:
            if value is False:
                explicit.append(c.get("name"))
        elif not pod_ok:
            implicit.append(c.get("name"))
    if explicit:
        setters.append(f"{_plural('container', 'containers', len(explicit))} {_quote(explicit)}")
    if setters:
        return ("runAsNonRoot != true",
                f"{' and '.join(setters)} must not set securityContext.runAsNonRoot=false")
    if implicit:
        return ("runAsNonRoot != true",
                f"pod or {_plural('container', 'containers', len(implicit))} {_quote(implicit)} "
                "must set securityContext.runAsNonRoot=true")
    return None


def _run_as_user(meta, spec):
    setters = ["pod"] if _sc(spec).get("runAsUser") == 0 and \
        _sc(spec).get("runAsUser") is not False else []
    explicit = [c.get("name") for c in _containers(spec)
                if _sc(c).get("runAsUser") == 0 and _sc(c).get("runAsUser") is not False]
    if explicit:
        setters.append(f"{_plural('container', 'containers', len(explicit))} {_quote(explicit)}")
    if setters:
        return ("runAsUser=0", f"{' and '.join(setters)} must not set runAsUser=0")
    return None


def _seccomp_restricted(meta, spec):
    setters, values, implicit = _seccomp_bad_setters(spec, implicit=True)
    if setters:
        return ("seccompProfile", f"{' and '.join(setters)} must not set securityContext."
                                  f"seccompProfile.type to {_quote(sorted(values))}")
    if implicit:
        return ("seccompProfile",
                f"pod or {_plural('container', 'containers', len(implicit))} {_quote(implicit)} "
                'must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"')
    return None


# (id, level, [(minimum minor version, function)], overridden baseline id)
CHECKS = [
    ("capabilities_baseline", "baseline", [(0, _capabilities_baseline)], None),
    ("hostNamespaces", "baseline", [(0, _host_namespaces)], None),
    ("hostPathVolumes", "baseline", [(0, _host_path_volumes)], None),
    ("hostPorts", "baseline", [(0, _host_ports)], None),
    ("hostProbesAndHostLifecycle", "baseline", [(34, _host_probes)], None),
    ("privileged", "baseline", [(0, _privileged)], None),
    ("seccompProfile_baseline", "baseline", [(0, _seccomp_annotations), (19, _seccomp_baseline)],
     None),
    ("allowPrivilegeEscalation", "restricted", [(8, _allow_privilege_escalation)], None),
    ("capabilities_restricted", "restricted", [(22, _capabilities_restricted)],
     "capabilities_baseline"),
    ("restrictedVolumes", "restricted", [(0, _restricted_volumes)], "hostPathVolumes"),
    ("runAsNonRoot", "restricted", [(0, _run_as_non_root)], None),
    ("runAsUser", "restricted", [(23, _run_as_user)], None),
    ("seccompProfile_restricted", "restricted", [(19, _seccomp_restricted)],
     "seccompProfile_baseline"),
]


def _checks_for(level: str, minor: int) -> list:
    """The check functions of a level at a version, in Kubernetes' evaluation order."""
    def at(versions):
        fns = [fn for since, fn in versions if since <= minor]
        return fns[-1] if fns else None
    baseline = [(cid, at(v)) for cid, lvl, v, _ in CHECKS if lvl == "baseline"]
    restricted = [(cid, at(v), over) for cid, lvl, v, over in CHECKS if lvl == "restricted"]
    if level == "baseline":
        return [fn for _, fn in sorted(baseline) if fn]
    overridden = {over for _, fn, over in restricted if fn and over}
    return [fn for cid, fn in sorted(baseline) if fn and cid not in overridden] + \
        [fn for _, fn, _ in sorted(restricted) if fn]


# -- the interface -------------------------------------------------------------------------

def policy(namespace_labels: dict | None) -> tuple[str, str]:
    """(level, version) to enforce for a namespace with these labels."""
    labels = namespace_labels or {}
    level = labels.get(ENFORCE_LABEL, "privileged")
    if level not in LEVELS:
        level = "restricted"          # an invalid level fails closed
    version = labels.get(ENFORCE_VERSION_LABEL, "latest")
    if version != "latest" and not (isinstance(version, str) and VERSION.fullmatch(version)):
        version = "latest"
    return level, version


def check(level: str, pod: dict, version: str = "latest") -> list[str]:
    """The violations of `pod` (a Pod object as JSON) against a level: "reason (detail)"."""
    if level == "privileged":
        return []
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security level {level!r}")
    minor = LATEST if version == "latest" else int(VERSION.fullmatch(version).group(1))
    meta = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    out = []
    for fn in _checks_for(level, minor):
        found = fn(meta, spec)
        if found:
            reason, detail = found
            out.append(f"{reason} ({detail})" if detail else reason)
    return out


def evaluate(namespace_labels: dict | None, pod: dict) -> list[str]:
    """The violations of `pod` against its namespace's enforce level; [] when it may run."""
    level, version = policy(namespace_labels)
    return check(level, pod, version)


def forbidden_message(namespace_labels: dict | None, pod: dict) -> str | None:
    """kube-apiserver's refusal for a pod its namespace does not allow, or None."""
    violations = evaluate(namespace_labels, pod)
    if not violations:
        return None
    level, version = policy(namespace_labels)
    name = ((pod.get("metadata") or {}).get("name")) if isinstance(pod.get("metadata"), dict) \
        else None
    return (f'pods "{name or ""}" is forbidden: violates PodSecurity "{level}:{version}": '
            + ", ".join(violations))

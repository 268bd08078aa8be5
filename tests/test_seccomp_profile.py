"""Seccomp profile conversion (containers/common format -> OCI linux.seccomp): pure logic,
plus the bounded profile reader. No daemon, no runc."""
import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from podnetd.runtime import seccomp, spec
from podnetd.runtime.seccomp import ProfileError

DEFAULT_CAPS = spec.capabilities([], [], False)

needs_default = pytest.mark.skipif(not os.path.exists(seccomp.DEFAULT_PROFILE),
                                   reason="containers-common's seccomp.json is not installed")


def default_profile() -> dict:
    with open(seccomp.DEFAULT_PROFILE) as f:
        return json.load(f)


def rules_for(oci: dict, name: str) -> list[dict]:
    return [r for r in oci["syscalls"] if name in r["names"]]


@needs_default
def test_runtime_default_on_amd64_as_podman_converts_it():
    oci = seccomp.to_oci(default_profile(), DEFAULT_CAPS, "amd64", (6, 1))
    assert oci["defaultAction"] == "SCMP_ACT_ERRNO" and oci["defaultErrnoRet"] == 38
    assert oci["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    # arch rules: amd64's kept, arm's and s390's dropped
    assert rules_for(oci, "arch_prctl") and not rules_for(oci, "arm_fadvise64_64")
    assert not rules_for(oci, "s390_pci_mmio_read")
    # capability rules: without CAP_SYS_ADMIN, bpf is refused (EPERM), not allowed
    assert [(r["action"], r.get("errnoRet")) for r in rules_for(oci, "bpf")] == \
        [("SCMP_ACT_ERRNO", 1)]
    # personality only with the listed argument values
    personality = rules_for(oci, "personality")
    assert {r["args"][0]["value"] for r in personality} == {0, 8, 0x20000, 0x20008, 0xffffffff}
    assert all(r["args"][0]["op"] == "SCMP_CMP_EQ" for r in personality)
    json.dumps(oci)   # what goes into config.json


@needs_default
def test_capabilities_select_rules():
    oci = seccomp.to_oci(default_profile(), DEFAULT_CAPS + ["CAP_SYS_ADMIN"], "amd64", (6, 1))
    assert [r["action"] for r in rules_for(oci, "bpf")] == ["SCMP_ACT_ALLOW"]
    none = seccomp.to_oci(default_profile(), [], "amd64", (6, 1))
    assert [r["action"] for r in rules_for(none, "chroot")] == ["SCMP_ACT_ERRNO"]
    with_chroot = seccomp.to_oci(default_profile(), ["CAP_SYS_CHROOT"], "amd64", (6, 1))
    assert [r["action"] for r in rules_for(with_chroot, "chroot")] == ["SCMP_ACT_ALLOW"]


@needs_default
def test_other_architectures():
    arm = seccomp.to_oci(default_profile(), DEFAULT_CAPS, "arm64", (6, 1))
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert rules_for(arm, "arm_fadvise64_64") and not rules_for(arm, "arch_prctl")
    riscv = seccomp.to_oci(default_profile(), DEFAULT_CAPS, "riscv64", (6, 1))
    assert "architectures" not in riscv   # libseccomp's native arch, as podman


def test_min_kernel_includes_and_excludes():
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["new"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.8"}},
        {"names": ["old"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.8"}},
        {"name": "single", "action": "SCMP_ACT_LOG"}]}
    names = lambda k: [r["names"] for r in seccomp.to_oci(profile, [], "amd64", k)["syscalls"]]
    assert names((5, 4)) == [["old"], ["single"]]
    assert names((6, 1)) == [["new"], ["single"]]


def test_empty_profile_means_no_filter():
    assert seccomp.to_oci({}, [], "amd64", (6, 1)) is None


@pytest.mark.parametrize("profile,why", [
    ([], "JSON object"),
    ({"defaultAction": "SCMP_ACT_BOGUS"}, "defaultAction"),
    ({"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/run/agent.sock"}, "defaultAction"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x.sock"}, "listenerPath"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
      "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}, "both"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": "all"}, "syscalls"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [1], "action": "SCMP_ACT_LOG"}]},
     "syscalls[0].names"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": "x"}]},
     "syscalls[0].action"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ERRNO", "errnoRet": -1}]}, "errnoRet"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "op": "SCMP_CMP_EQ"}]}]},
     "args[0].index"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": 2**64, "op": "SCMP_CMP_EQ"}]}]}, "args[0].value"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "five"}}]},
     "minKernel"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]}, "flags"),
])
def test_bad_profiles_are_clear_errors(profile, why):
    with pytest.raises(ProfileError, match=why.replace("[", r"\[").replace("]", r"\]")):
        seccomp.to_oci(profile, [], "amd64", (6, 1))


junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                              st.sampled_from(sorted(seccomp.ACTIONS | seccomp.OPERATORS))),
                    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(
                        st.sampled_from(["defaultAction", "syscalls", "names", "name", "action",
                                         "args", "index", "value", "op", "includes", "excludes",
                                         "caps", "arches", "minKernel", "archMap", "errnoRet",
                                         "architecture", "subArchitectures", "flags"]),
                        kids, max_size=5)), max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(junk)
def test_fuzz_profiles(profile):
    try:
        out = seccomp.to_oci(profile, DEFAULT_CAPS, "amd64", (6, 1))
    except ProfileError as e:
        assert str(e)
        return
    if out is not None:
        json.dumps(out)
        assert out["defaultAction"] in seccomp.ACTIONS


@pytest.mark.parametrize("relative,ok", [
    ("a.json", True), ("team/a.json", True), ("./a.json", True),
    ("../a.json", False), ("a/../../b.json", False), ("/etc/a.json", False), ("", False),
    ("a\0b", False),
])
def test_localhost_path_stays_inside_the_root(relative, ok):
    if ok:
        assert seccomp.localhost_path("/var/lib/podnet/seccomp", relative).startswith(
            "/var/lib/podnet/seccomp/")
    else:
        with pytest.raises(ProfileError):
            seccomp.localhost_path("/var/lib/podnet/seccomp", relative)


def test_reader_refuses_fifos_big_files_and_escapes(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ProfileError, match="not a regular file"):
        seccomp.read_profile_file(str(tmp_path / "fifo"), str(tmp_path))   # no hang
    (tmp_path / "big").write_bytes(b" " * (seccomp.MAX_PROFILE_BYTES + 1))
    with pytest.raises(ProfileError, match="larger than"):
        seccomp.read_profile_file(str(tmp_path / "big"))
    (tmp_path / "out").symlink_to("/etc/hostname")
    with pytest.raises(ProfileError, match="resolves outside"):
        seccomp.read_profile_file(str(tmp_path / "out"), str(tmp_path))
    with pytest.raises(ProfileError, match="not found"):
        seccomp.read_profile_file(str(tmp_path / "none"))
    (tmp_path / "bad.json").write_text("{")
    profiles = seccomp.Profiles(str(tmp_path))
    with pytest.raises(ProfileError, match="not JSON"):
        profiles.oci({"seccompProfile": {"type": "Localhost", "localhostProfile": "bad.json"}},
                     False, DEFAULT_CAPS)


def test_profile_choice():
    assert seccomp.profile_for({}, False) == ("RuntimeDefault", None)
    assert seccomp.profile_for({"seccompProfile": {"type": "RuntimeDefault"}}, True) == \
        ("Unconfined", None)
    assert seccomp.profile_for({"seccompProfile": {"type": "Localhost",
                                                   "localhostProfile": "a.json"}}, False) == \
        ("Localhost", "a.json")
    profiles = seccomp.Profiles("/nonexistent", default="/nonexistent/seccomp.json")
    assert profiles.oci({"seccompProfile": {"type": "Unconfined"}}, False, []) is None
    with pytest.raises(ProfileError, match="not found"):   # fails closed, never unconfined
        profiles.oci({}, False, [])


@needs_default
def test_container_spec_carries_the_filter():
    oci = seccomp.Profiles().oci({}, False, DEFAULT_CAPS)
    cfg = spec.container_spec(rootfs="/r", args=["sh"], env=[], cwd="/", uid=0, gid=0,
                              caps=DEFAULT_CAPS, readonly_root=False, no_new_privs=False,
                              privileged=False, hostname=None, namespaces=[], mounts=[],
                              cgroups_path="/x", res={}, seccomp=oci)
    assert cfg["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    cfg = spec.container_spec(rootfs="/r", args=["sh"], env=[], cwd="/", uid=0, gid=0,
                              caps=DEFAULT_CAPS, readonly_root=False, no_new_privs=False,
                              privileged=False, hostname=None, namespaces=[], mounts=[],
                              cgroups_path="/x", res={}, seccomp=None)
    assert "seccomp" not in cfg["linux"]


def test_cpu_bounds_runc_accepts():
    """Kubernetes caps a quantity at 2^63-1, far beyond the kernel's quota and shares."""
    res = spec.resources((2**63 - 1) * 1000, (2**63 - 1) * 1000, 2**63 - 1, False)
    assert res["cpu"] == {"shares": spec.MAX_SHARES}
    res = spec.resources(1, 1, None, False)
    assert res["cpu"] == {"shares": 2, "quota": 1000, "period": 100000}


def test_cpu_shares_as_the_kubelet_sets_them():
    """MilliCPUToShares: no request is the minimum (best effort yields to everything else), a
    limit alone is the request."""
    assert spec.resources(None, None, None, False)["cpu"] == {"shares": spec.MIN_SHARES}
    assert spec.resources(500, None, None, False)["cpu"] == {"shares": 512, "quota": 50000,
                                                             "period": 100000}
    assert spec.resources(None, 100, None, False)["cpu"] == {"shares": 102}

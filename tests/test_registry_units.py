"""The pure parts of registry pulls: image name grammar and store names, the API server's
imagePullPolicy default, the flags (insecure registries, auth file), skopeo's argv, its error
output summarized into one line without credentials, and the kubelet's image back-off.
(Pulls for real: test_runtime_registry.py.)"""
import argparse
import base64
import json
import os

import pytest

from podnetd.runtime import images, registry
from podnetd.runtime.puller import Backoff, duration, pull_policy

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("name, domain, path, tag, digest", [
    ("busybox", "", "busybox", "", ""),
    ("busybox:1.36", "", "busybox", "1.36", ""),
    ("team/app:1", "", "team/app", "1", ""),
    ("docker.io/library/busybox", "", "busybox", "", ""),
    ("localhost/busybox", "", "busybox", "", ""),
    ("localhost:5000/busybox", "localhost:5000", "busybox", "", ""),
    ("127.0.0.1:5000/a/b-c_d:v1.0", "127.0.0.1:5000", "a/b-c_d", "v1.0", ""),
    ("reg.example.com/x", "reg.example.com", "x", "", ""),
    (f"reg.example.com/x@{DIGEST}", "reg.example.com", "x", "", DIGEST),
    (f"reg.example.com/x:y@{DIGEST}", "reg.example.com", "x", "y", DIGEST),
])
def test_reference_grammar(name, domain, path, tag, digest):
    ref = registry.parse(name)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    # the puller and `image import` name one image the same way
    assert ref.store_name == images.normalize(name)


@pytest.mark.parametrize("name", [
    "", "Bad/Name", "reg.example.com/UPPER", "-x", "a..b/c", "x:", "x@sha256:12",
    "reg.example.com//x", "x y", "reg.example.com:99999999/x", "x:" + "t" * 129,
    "reg.example.com/" + "a" * 300, "x\n", "--src-creds=a:b",
])
def test_invalid_names(name):
    with pytest.raises(registry.InvalidImageName):
        registry.parse(name)


def test_pull_ref_and_pullable():
    assert not registry.parse("busybox:1").pullable
    assert registry.parse("127.0.0.1:5000/busybox").pull_ref == "127.0.0.1:5000/busybox:latest"
    # containers/image takes no tag beside a digest: the digest names the content
    assert registry.parse(f"r.io/x:y@{DIGEST}").pull_ref == f"r.io/x@{DIGEST}"
    with pytest.raises(registry.PullError, match="names no registry"):
        registry.check_pullable(registry.parse("busybox"))


@pytest.mark.parametrize("name, spec, want", [
    ("r.io/x", {}, "Always"),
    ("r.io/x:latest", {}, "Always"),
    ("r.io/x:1", {}, "IfNotPresent"),
    (f"r.io/x@{DIGEST}", {}, "IfNotPresent"),
    ("r.io/x:latest", {"imagePullPolicy": "Never"}, "Never"),
    ("r.io/x:1", {"imagePullPolicy": "Always"}, "Always"),
])
def test_pull_policy_defaults_as_the_api_server(name, spec, want):
    assert pull_policy(spec, registry.parse(name)) == want


def flags(**kw) -> argparse.Namespace:
    return argparse.Namespace(insecure_registry=kw.get("insecure", []),
                              registry_auth_file=kw.get("auth"))


def test_insecure_registries_repeated_or_comma_separated():
    cfg = registry.RegistryConfig.from_flags(flags(insecure=["a.io:5000, b.io", "10.0.0.5:80"]))
    assert cfg.insecure == {"a.io:5000", "b.io", "10.0.0.5:80"}
    assert cfg.is_insecure("a.io:5000") and not cfg.is_insecure("a.io:5001")
    assert cfg.is_insecure("b.io:443")    # a host without a port: all its ports
    for bad in ("http://a.io", "a.io/x", "a b", "a.io:port"):
        with pytest.raises(ValueError, match="--insecure-registry"):
            registry.RegistryConfig.from_flags(flags(insecure=[bad]))


def test_auth_file_checks(tmp_path):
    good = tmp_path / "auth.json"
    good.write_text(json.dumps({"auths": {"r.io": {"auth": "eDp5"}}}))
    os.chmod(good, 0o600)
    assert registry.RegistryConfig.from_flags(flags(auth=str(good))).auth_file == str(good)
    (tmp_path / "junk.json").write_text("{nope")
    (tmp_path / "list.json").write_text('{"auths": []}')
    os.mkfifo(tmp_path / "fifo")    # must not hang the check
    for path, why in ((tmp_path / "missing", "No such file"), (tmp_path, "not a regular file"),
                      (tmp_path / "fifo", "not a regular file"),
                      (tmp_path / "junk.json", "not JSON"),
                      (tmp_path / "list.json", '"auths" must be an object'),
                      ("relative.json", "absolute path")):
        with pytest.raises(ValueError, match=why) as e:
            registry.RegistryConfig.from_flags(flags(auth=str(path)))
        assert str(e.value).startswith("--registry-auth-file")


def test_skopeo_argv():
    ref = registry.parse("127.0.0.1:5000/busybox:1")
    plain = registry.skopeo_argv(ref, registry.RegistryConfig(), "/s/image.tar")
    assert plain == ["skopeo", "copy", "--quiet", "--src-no-creds",
                     "docker://127.0.0.1:5000/busybox:1", "oci-archive:/s/image.tar"]
    cfg = registry.RegistryConfig(frozenset({"127.0.0.1:5000"}), "/etc/podnet/auth.json")
    argv = registry.skopeo_argv(ref, cfg, "/s/image.tar")
    assert "--src-tls-verify=false" in argv and "--src-no-creds" not in argv
    assert argv[argv.index("--src-authfile") + 1] == "/etc/podnet/auth.json"


# what skopeo 1.9 prints (seen against docker-registry 2.8)
FATAL = 'time="2026-01-01T00:00:00Z" level=fatal msg="{}"\n'
REF = registry.parse("127.0.0.1:5000/busybox:2")


@pytest.mark.parametrize("msg, want", [
    ("initializing source docker://127.0.0.1:5000/busybox:2: reading manifest 2 in "
     "127.0.0.1:5000/busybox: manifest unknown: manifest unknown",
     "127.0.0.1:5000/busybox:2: not found (manifest unknown)"),
    ('initializing source docker://127.0.0.1:5000/busybox:2: pinging container registry '
     '127.0.0.1:5000: Get \\"http://127.0.0.1:5000/v2/\\": dial tcp 127.0.0.1:5000: connect: '
     'connection refused', "registry 127.0.0.1:5000 refused the connection (is it running?)"),
    ("initializing source docker://127.0.0.1:5000/busybox:2: reading manifest 2 in "
     "127.0.0.1:5000/busybox: unauthorized: authentication required",
     "127.0.0.1:5000/busybox:2: unauthorized: authentication required (credentials for "
     "127.0.0.1:5000 come from --registry-auth-file)"),
    ('initializing source docker://127.0.0.1:5000/busybox:2: pinging container registry '
     '127.0.0.1:5000: Get \\"https://127.0.0.1:5000/v2/\\": http: server gave HTTP response to '
     'HTTPS client', "registry 127.0.0.1:5000 speaks plain HTTP: start podnetd with "
                     "--insecure-registry 127.0.0.1:5000"),
    ("something new: went wrong", "something new: went wrong"),
])
def test_skopeo_errors_become_one_line(msg, want):
    stderr = "Getting image source signatures\n" + FATAL.format(msg)
    assert registry.summarize(stderr, REF) == want


def test_error_messages_are_bounded_and_scrubbed(tmp_path):
    auth = tmp_path / "auth.json"
    token = base64.b64encode(b"alice:hunter2-long").decode()
    auth.write_text(json.dumps({"auths": {"r.io": {"auth": token}}}))
    secrets = registry.secrets_of(str(auth))
    text = registry.summarize(FATAL.format(f"odd failure with {token} and hunter2-long " +
                                           "x" * 2000), REF, secrets)
    assert token not in text and "hunter2-long" not in text and "***" in text
    assert len(text) <= registry.MESSAGE_LIMIT + 3 and "\n" not in text
    assert registry.summarize("", REF) == "skopeo failed without a message"
    assert registry.secrets_of(str(tmp_path / "missing")) == []


def test_backoff_doubles_to_the_maximum_and_is_forgotten():
    now = [100.0]
    b = Backoff(10, 300, clock=lambda: now[0])
    assert [b.failed("k") for _ in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    assert b.left("k") == 300 and b.left("other") == 0
    now[0] += 120
    assert b.left("k") == 180
    now[0] += 600 + 1    # idle for twice the maximum: starts from the base again
    assert b.failed("k") == 10
    b.forget("k")
    assert b.left("k") == 0


def test_durations_as_the_kubelet_prints_them():
    assert duration(1.23456) == "1.235s" and duration(0.8124) == "812ms"

"""Pulling an image from an OCI registry (CRI-O's PullImage): skopeo copies
`docker://HOST[:PORT]/NAME[:TAG|@sha256:...]` into an oci-archive in a private directory inside
the image store, and the store imports that archive through the very checks an archive given to
`podnetctl image import` goes through (documents, digests, limits, layer paths): a registry is
as untrusted as any archive. skopeo is Debian's, maintained, and speaks the registry protocol
(token and basic auth, manifest lists, redirects), so podnet does not.

Image names follow containers/image: the first component is a registry host when it has a dot or
a port or is `localhost`... except that the store keeps `docker.io/...` and `localhost/...`
names as short names (podman's habit), and a short name is never pulled: a node has no
internet, so `busybox` can only come from `podnetctl image import`.

Nothing here blocks the event loop: skopeo is an asyncio subprocess under a timeout, its output
read boundedly, and the import runs in a worker thread."""
import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import stat
import tempfile

from ..aio import within
from .images import TMP_PREFIX, ImageError, ImageStore, normalize

log = logging.getLogger(__name__)

SKOPEO = "skopeo"
PULL_TIMEOUT = 600.0        # seconds for one pull (CRI-O's default pull progress timeout is off;
#                             the kubelet's runtime request timeout is 2 minutes: images are big)
STDERR_LIMIT = 64 << 10     # what is kept of skopeo's error output
MESSAGE_LIMIT = 400         # characters of an error message shown to users
AUTH_FILE_LIMIT = 1 << 20

# distribution/reference's grammar (the subset podnet accepts: no IPv6 literal hosts)
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]{{1,5}})?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE_RE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?\Z")
_DOMAIN_RE = re.compile(rf"{_DOMAIN}\Z")
MAX_NAME = 255


class InvalidImageName(ValueError):
    """The image name does not parse (kubelet: InvalidImageName)."""


class PullError(Exception):
    """A pull failed; the message is one line for users (no credentials in it)."""


@dataclasses.dataclass(frozen=True)
class Reference:
    """A parsed image name. domain is "" for a short name (docker.io in Kubernetes)."""
    domain: str
    path: str
    tag: str            # "" when there is none (then "latest" unless there is a digest)
    digest: str         # "sha256:..." or ""

    @property
    def pullable(self) -> bool:
        return bool(self.domain)

    @property
    def store_name(self) -> str:
        """The name the image store keeps it under (images.normalize of the name)."""
        return normalize(str(self))

    @property
    def pull_ref(self) -> str:
        """What skopeo pulls: by digest when there is one (a tag beside it is not supported
        by containers/image, and the digest is what names the content), else by tag."""
        name = f"{self.domain}/{self.path}"
        return f"{name}@{self.digest}" if self.digest else f"{name}:{self.tag or 'latest'}"

    def __str__(self) -> str:
        return (f"{self.domain}/" if self.domain else "") + self.path \
            + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse(image: str) -> Reference:
    """An image name as a pod names it, checked against the reference grammar."""
    if not isinstance(image, str) or not image or len(image) > MAX_NAME + 200:
        raise InvalidImageName(f"couldn't parse image name {str(image)[:80]!r}: invalid "
                               "reference format")
    m = _REFERENCE_RE.match(image)
    if m is None:
        raise InvalidImageName(f"couldn't parse image name {image[:300]!r}: invalid reference "
                               "format")
    domain, path = m.group("domain") or "", m.group("path")
    # containers/image: a first component without a dot or a port that is not "localhost" is
    # a path component (docker.io/library/...), e.g. "team/app:1"
    if domain and "." not in domain and ":" not in domain and domain != "localhost":
        if domain != domain.lower():
            raise InvalidImageName(f"couldn't parse image name {image[:300]!r}: repository "
                                   "name must be lowercase")
        domain, path = "", f"{domain}/{path}"
    # the store's short names: docker.io and podman's localhost/ never name a registry here
    if domain in ("docker.io", "localhost"):
        if domain == "docker.io" and path.startswith("library/"):
            path = path[len("library/"):]
        domain = ""
    if len(path) + len(domain) + 1 > MAX_NAME:
        raise InvalidImageName(f"image name {image[:80]!r}...: repository name must not be more "
                               f"than {MAX_NAME} characters")
    return Reference(domain, path, m.group("tag") or "", m.group("digest") or "")


def default_pull_policy(ref: Reference) -> str:
    """The API server's default imagePullPolicy: Always for :latest or no tag (and no
    digest), else IfNotPresent."""
    if ref.tag == "latest" or (not ref.tag and not ref.digest):
        return "Always"
    return "IfNotPresent"


# -- configuration (the node's flags) ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RegistryConfig:
    insecure: frozenset[str] = frozenset()   # HOST:PORT (or HOST: every port), plain HTTP
    auth_file: str = ""                      # containers-auth.json
    timeout: float = PULL_TIMEOUT

    def is_insecure(self, domain: str) -> bool:
        return domain in self.insecure or domain.rsplit(":", 1)[0] in self.insecure

    @classmethod
    def from_flags(cls, ns) -> "RegistryConfig":
        """From --insecure-registry (repeated or comma-separated) and --registry-auth-file;
        ValueError with the flag's name when one is wrong."""
        insecure = set()
        for item in ns.insecure_registry or []:
            for host in str(item).split(","):
                host = host.strip()
                if not host:
                    continue
                if not _DOMAIN_RE.match(host) or "/" in host:
                    raise ValueError(f"--insecure-registry {host[:80]!r}: give HOST or HOST:PORT "
                                     "(e.g. 10.0.0.5:5000)")
                insecure.add(host)
        auth = ns.registry_auth_file or ""
        if auth:
            check_auth_file(auth)
        return cls(frozenset(insecure), auth)


def check_auth_file(path: str) -> None:
    """The auth file exists, is a regular file of at most 1 MiB, and holds a JSON object with
    an "auths" object (containers-auth.json). Its contents are never shown."""
    flag = "--registry-auth-file"
    if not os.path.isabs(path):
        raise ValueError(f"{flag} {path}: must be an absolute path")
    data, mode = _read_regular(path, flag)
    try:
        doc = json.loads(data)
    except ValueError:
        raise ValueError(f"{flag} {path}: not JSON (containers-auth.json: "
                         '{"auths": {"HOST:PORT": {"auth": "BASE64(user:password)"}}})') from None
    if not isinstance(doc, dict) or not isinstance(doc.get("auths", {}), dict):
        raise ValueError(f"{flag} {path}: \"auths\" must be an object (containers-auth.json)")
    if mode & 0o077:
        log.warning("%s %s is readable by group or others (mode %o): 0600 is recommended",
                    flag, path, stat.S_IMODE(mode))


def _read_regular(path: str, flag: str) -> tuple[bytes, int]:
    """A regular file of at most AUTH_FILE_LIMIT bytes and its mode; opened non-blocking, so a
    FIFO put there never hangs the reader. ValueError naming the flag."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise ValueError(f"{flag} {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{flag} {path}: not a regular file")
        if st.st_size > AUTH_FILE_LIMIT:
            raise ValueError(f"{flag} {path}: larger than 1 MiB")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(AUTH_FILE_LIMIT + 1), st.st_mode
    except OSError as e:
        raise ValueError(f"{flag} {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def secrets_of(auth_file: str) -> list[str]:
    """The credentials in the auth file (encoded and decoded), to scrub from messages."""
    if not auth_file:
        return []
    try:
        doc = json.loads(_read_regular(auth_file, "")[0])
        out = []
        for entry in (doc.get("auths") or {}).values():
            for key in ("auth", "identitytoken", "registrytoken", "password"):
                value = entry.get(key) if isinstance(entry, dict) else None
                if isinstance(value, str) and len(value) >= 4:
                    out.append(value)
                    if key == "auth":
                        with contextlib.suppress(ValueError):
                            user_pw = base64.b64decode(value, validate=True).decode()
                            out.append(user_pw)
                            out.append(user_pw.partition(":")[2])
        return [s for s in out if len(s) >= 4]
    except (OSError, ValueError, AttributeError):
        return []


# -- errors ---------------------------------------------------------------------------------

_MSG_RE = re.compile(r'level=(?:fatal|error) msg="((?:[^"\\]|\\.)*)"')


def summarize(stderr: str, ref: Reference, secrets: list[str] = ()) -> str:
    """skopeo's error output as one line for users: the common failures named plainly, else
    skopeo's own message (the last fatal one), cut short, credentials scrubbed."""
    found = _MSG_RE.findall(stderr)
    if found:
        text = found[-1]
        with contextlib.suppress(ValueError):   # skopeo quotes msg as Go does
            text = json.loads(f'"{text}"')
    else:
        lines = stderr.strip().splitlines()
        text = lines[-1] if lines else "skopeo failed without a message"
    low = text.lower()
    host = ref.domain
    if "manifest unknown" in low or "name unknown" in low:
        msg = f"{ref.pull_ref}: not found (manifest unknown)"
    elif "connection refused" in low:
        msg = f"registry {host} refused the connection (is it running?)"
    elif "no such host" in low or "server misbehaving" in low:
        msg = f"registry {host}: no such host"
    elif "i/o timeout" in low or "deadline exceeded" in low or "no route to host" in low \
            or "network is unreachable" in low:
        msg = f"registry {host} unreachable: {_tail(text)}"
    elif "unauthorized" in low or "authentication required" in low or "denied" in low:
        msg = (f"{ref.pull_ref}: unauthorized: authentication required (credentials for "
               f"{host} come from --registry-auth-file)")
    elif "server gave http response to https client" in low:
        msg = f"registry {host} speaks plain HTTP: start podnetd with --insecure-registry {host}"
    elif "certificate" in low or "x509" in low:
        msg = f"registry {host}: TLS certificate not trusted: {_tail(text)}"
    else:
        msg = text
    msg = " ".join(msg.split())
    for s in sorted(set(secrets), key=len, reverse=True):
        msg = msg.replace(s, "***")
    return msg[:MESSAGE_LIMIT] + ("..." if len(msg) > MESSAGE_LIMIT else "")


def _tail(text: str) -> str:
    """The innermost cause of a Go error chain ("a: b: c" -> "c")."""
    return text.rsplit(": ", 1)[-1]


# -- the pull -------------------------------------------------------------------------------

def skopeo_argv(ref: Reference, cfg: RegistryConfig, archive: str) -> list[str]:
    argv = [SKOPEO, "copy", "--quiet"]
    if cfg.is_insecure(ref.domain):
        argv.append("--src-tls-verify=false")
    # the node's flag is the only source of credentials: never root's own podman/docker logins
    argv += ["--src-authfile", cfg.auth_file] if cfg.auth_file else ["--src-no-creds"]
    return argv + [f"docker://{ref.pull_ref}", f"oci-archive:{archive}"]


def check_pullable(ref: Reference) -> None:
    if not ref.pullable:
        raise PullError(f"image {str(ref)!r} names no registry (HOST[:PORT]/NAME[:TAG]): this "
                        "node pulls only from the registry an image names; a short name must "
                        "be imported (podnetctl image import)")


async def pull(ref: Reference, cfg: RegistryConfig, store: ImageStore) -> dict:
    """Pull ref into the store under ref.store_name; the store's image (images.get). PullError
    with one line when it fails; cancelling it kills skopeo and leaves nothing behind."""
    check_pullable(ref)
    if shutil.which(SKOPEO) is None:
        raise PullError("skopeo is not installed on this node (apt-get install skopeo)")
    # inside the store, so the store's start-up sweep removes what a crash leaves (TMP_PREFIX)
    work = await asyncio.to_thread(tempfile.mkdtemp, prefix=f"{TMP_PREFIX}pull-", dir=store.root)
    try:
        archive = os.path.join(work, "image.tar")
        await _skopeo(skopeo_argv(ref, cfg, archive), work, cfg, ref)
        try:
            return await asyncio.to_thread(store.import_archive, ref.store_name, archive,
                                           f"docker://{ref.pull_ref}")
        except ImageError as e:
            raise PullError(str(e)) from None
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


async def _skopeo(argv: list[str], work: str, cfg: RegistryConfig, ref: Reference) -> None:
    # a bare environment: skopeo's temporary files in our directory, no $HOME credentials
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "TMPDIR": work,
           "HOME": work, "LANG": "C"}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=work, start_new_session=True)
    except OSError as e:
        raise PullError(f"cannot run skopeo: {e.strerror}") from None
    try:
        stderr = await within(_bounded(proc.stderr), cfg.timeout)
        await within(proc.wait(), 10)
    except asyncio.TimeoutError:
        raise PullError(f"{ref.pull_ref}: pull timed out after {cfg.timeout:g}s") from None
    finally:
        if proc.returncode is None:   # timed out or cancelled: skopeo and its children go
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(BaseException):
                await asyncio.shield(proc.wait())
    if proc.returncode != 0:
        raise PullError(summarize(stderr, ref, await asyncio.to_thread(secrets_of,
                                                                        cfg.auth_file)))


async def _bounded(stream: asyncio.StreamReader) -> str:
    """Everything until EOF, keeping only the last STDERR_LIMIT bytes (the error is last)."""
    kept = b""
    while chunk := await stream.read(1 << 16):
        kept = (kept + chunk)[-STDERR_LIMIT:]
    return kept.decode(errors="replace")

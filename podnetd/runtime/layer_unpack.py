"""Apply image layers (tar streams) onto a root directory that a hostile layer cannot leave.

Every path is resolved by our own walk from a directory fd of the root, one component at a
time with O_NOFOLLOW: a symlink met on the way is interpreted as if the root were `/` (as
podman's chroot unpacker and containerd's RootPath do, so usrmerge images' `bin -> usr/bin`
keep working), `..` stops at the root, and no kernel call ever follows a link. Entries are
created with *at() calls relative to their parent's fd; owner, mode and times are set on an
fd opened with O_NOFOLLOW or with AT_SYMLINK_NOFOLLOW, never through a link.

- hard links: only to regular files already inside the root (a link to a symlink, a
  directory or a device is refused); a hard link's header attributes are not applied (as GNU
  tar does: the inode keeps those of its file entry).
- character and block devices are skipped with a log line (what rootless podman ends up with);
  FIFOs are created (they are harmless inside the root).
- whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`) hide what lower layers put
  there, never what this layer adds (the OCI layer spec), in one streaming pass.
- counts and sizes are charged to a Budget shared by all layers of an import."""
import logging
import math
import os
import shutil
import stat
import tarfile

from .image_archive import ImageError, Limits

log = logging.getLogger(__name__)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_SYMLINK_HOPS = 40  # the kernel's own limit
NAME_MAX = 255
MAX_ID = 2 ** 32 - 2   # (uid_t)-1 means "unchanged" to chown
MAX_MTIME = 2 ** 33    # year 2242; later or negative times are clamped
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20


class Budget:
    """Entries and unpacked bytes left for the whole import."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.entries = limits.max_entries
        self.unpacked = limits.max_unpacked_bytes

    def entry(self) -> None:
        self.entries -= 1
        if self.entries < 0:
            raise ImageError(f"more than {self.limits.max_entries} entries in the layers "
                             "(max_entries)")

    def bytes(self, n: int) -> None:
        self.unpacked -= n
        if self.unpacked < 0:
            raise ImageError(f"the layers unpack to more than {self.limits.max_unpacked_bytes} "
                             "bytes (max_unpacked_bytes)")


def split_name(name: str, limits: Limits, what: str = "name") -> list[str]:
    """An archive path as components under the root: `./a//b/` -> [a, b]; a leading `/`
    means the root; `..` and NUL are refused, lengths bounded."""
    if "\0" in name:
        raise ImageError(f"{what} contains a NUL byte")
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > limits.max_path_bytes:
        raise ImageError(f"{what} is {size} bytes, over the limit of {limits.max_path_bytes} "
                         "(max_path_bytes)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    for p in parts:
        if p == "..":
            raise ImageError(f"{what} has a '..' component")
        if len(p.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise ImageError(f"{what} has a component longer than {NAME_MAX} bytes")
    return parts


def _check_link_text(target: str, limits: Limits) -> None:
    if "\0" in target:
        raise ImageError("link target contains a NUL byte")
    size = len(target.encode("utf-8", "surrogateescape"))
    if size > limits.max_path_bytes:
        raise ImageError(f"link target is {size} bytes, over the limit of "
                         f"{limits.max_path_bytes} (max_path_bytes)")


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(dir_fd: int, name: str) -> None:
    st = _lstat(name, dir_fd)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)  # fd-based: never follows a link out
    else:
        os.unlink(name, dir_fd=dir_fd)


class Root:
    """A directory fd of the root and the in-root resolution of paths below it."""

    def __init__(self, path: str):
        self.fd = os.open(path, _DIR_FLAGS)

    def close(self) -> None:
        os.close(self.fd)

    def open_dir(self, parts: list[str], create: bool) -> tuple[int, tuple[str, ...]] | None:
        """A new O_RDONLY fd of the directory `parts` names, resolved inside the root, and its
        canonical path (no symlinks). None when a component is missing and not `create`
        (then missing directories are made, 0755 root, as tar and podman do)."""
        stack: list[int] = []          # fds of the canonical components below the root
        canon: list[str] = []
        todo = list(reversed(parts))   # components still to walk, next one last
        hops = 0
        try:
            while todo:
                comp = todo.pop()
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if stack:
                        os.close(stack.pop())
                        canon.pop()
                    continue
                cur = stack[-1] if stack else self.fd
                st = _lstat(comp, cur)
                if st is None:
                    if not create:
                        return None
                    os.mkdir(comp, 0o755, dir_fd=cur)
                elif stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise ImageError(f"{'/'.join(parts)}: too many levels of symbolic links")
                    target = os.readlink(comp, dir_fd=cur)
                    if target.startswith("/"):
                        while stack:
                            os.close(stack.pop())
                        canon.clear()
                    todo.extend(reversed(target.split("/")))
                    continue
                elif not stat.S_ISDIR(st.st_mode):
                    raise ImageError(f"{'/'.join([*canon, comp])} is not a directory")
                stack.append(os.open(comp, _DIR_FLAGS, dir_fd=cur))
                canon.append(comp)
            fd = stack.pop() if stack else os.dup(self.fd)
            return fd, tuple(canon)
        finally:
            for fd in stack:
                os.close(fd)


def _times(mtime: float) -> tuple[int, int]:
    seconds = min(max(int(mtime), 0), MAX_MTIME) if math.isfinite(mtime) else 0
    return seconds * 10 ** 9, seconds * 10 ** 9


def _owner(m: tarfile.TarInfo) -> tuple[int, int]:
    for label, value in (("uid", m.uid), ("gid", m.gid)):
        if not isinstance(value, int) or not 0 <= value <= MAX_ID:
            raise ImageError(f"{label} {value!r} is out of range")
    return m.uid, m.gid


def _set_attrs(fd: int, m: tarfile.TarInfo) -> None:
    """Owner, then mode (chown clears setuid bits), then times, all on the fd itself."""
    os.fchown(fd, *_owner(m))
    os.fchmod(fd, m.mode & 0o7777)
    os.utime(fd, ns=_times(m.mtime))


class LayerUnpacker:
    """Applies layers in order onto one root; one instance per import."""

    def __init__(self, root: str, budget: Budget):
        self.root = Root(root)
        self.budget = budget
        self.limits = budget.limits
        self.skipped_devices = 0

    def close(self) -> None:
        self.root.close()

    def apply(self, layer: tarfile.TarFile) -> None:
        """Apply one layer (a tarfile in stream mode: one pass, in order)."""
        self.created: set[tuple[str, ...]] = set()   # paths this layer made (and their parents)
        dir_times: list[tuple[tuple[str, ...], tarfile.TarInfo]] = []
        while (m := layer.next()) is not None:
            layer.members.clear()  # tarfile keeps every header otherwise: memory per entry
            self.budget.entry()
            try:
                path = self._entry(layer, m)
            except ImageError as e:
                raise ImageError(f"entry {_short(m.name)}: {e}") from None
            except OSError as e:
                raise ImageError(f"entry {_short(m.name)}: {e.strerror or e}") from None
            except (ValueError, OverflowError) as e:
                raise ImageError(f"entry {_short(m.name)}: {e}") from None
            if path is not None and m.isdir():
                dir_times.append((path, m))
        # directory times last: creating their entries changed them
        for path, m in dir_times:
            opened = self.root.open_dir(list(path), create=False)
            if opened:
                os.utime(opened[0], ns=_times(m.mtime))
                os.close(opened[0])

    def _entry(self, layer: tarfile.TarFile, m: tarfile.TarInfo) -> tuple[str, ...] | None:
        parts = split_name(m.name, self.limits)
        if not parts:
            return None  # the root itself keeps its attributes
        base = parts[-1]
        if base.startswith(WHITEOUT):
            self._whiteout(parts)
            return None
        if m.ischr() or m.isblk():
            self.skipped_devices += 1
            log.info("image layer: skipped device node %s (devices are not created)",
                     "/".join(parts))
            return None
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or m.isfifo()):
            raise ImageError(f"unsupported entry type {m.type!r}")
        if m.isreg():
            if m.size > self.budget.unpacked:
                self.budget.bytes(m.size)  # raises, naming the limit
        opened = self.root.open_dir(parts[:-1], create=True)
        assert opened is not None
        parent_fd, parent = opened
        try:
            path = (*parent, base)
            for i in range(1, len(path) + 1):
                self.created.add(path[:i])
            if m.isdir():
                self._dir(parent_fd, base, m)
            elif m.isreg():
                self._file(parent_fd, base, m, layer)
            elif m.issym():
                self._symlink(parent_fd, base, m)
            elif m.islnk():
                self._hardlink(parent_fd, path, m)
            else:
                self._fifo(parent_fd, base, m)
            return path
        finally:
            os.close(parent_fd)

    def _dir(self, parent_fd: int, name: str, m: tarfile.TarInfo) -> None:
        st = _lstat(name, parent_fd)
        if st is None or not stat.S_ISDIR(st.st_mode):
            _remove(parent_fd, name)
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            os.fchown(fd, *_owner(m))
            os.fchmod(fd, m.mode & 0o7777)
        finally:
            os.close(fd)

    def _file(self, parent_fd: int, name: str, m: tarfile.TarInfo,
              layer: tarfile.TarFile) -> None:
        _remove(parent_fd, name)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent_fd)
        try:
            src = layer.extractfile(m)
            while chunk := src.read(_COPY_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            _set_attrs(fd, m)
        finally:
            os.close(fd)

    def _symlink(self, parent_fd: int, name: str, m: tarfile.TarInfo) -> None:
        # the target is stored as is (absolute targets are normal in images): it is only ever
        # interpreted by open_dir, inside the root
        _check_link_text(m.linkname, self.limits)
        if not m.linkname:
            raise ImageError("empty symlink target")
        _remove(parent_fd, name)
        os.symlink(m.linkname, name, dir_fd=parent_fd)
        os.chown(name, *_owner(m), dir_fd=parent_fd, follow_symlinks=False)
        os.utime(name, ns=_times(m.mtime), dir_fd=parent_fd, follow_symlinks=False)

    def _hardlink(self, parent_fd: int, path: tuple[str, ...], m: tarfile.TarInfo) -> None:
        target = split_name(m.linkname, self.limits, "link target")
        if not target:
            raise ImageError("hard link to the root")
        opened = self.root.open_dir(target[:-1], create=False)
        if opened is None:
            raise ImageError(f"hard link target {_short(m.linkname)} does not exist")
        target_fd, target_parent = opened
        try:
            st = _lstat(target[-1], target_fd)
            if st is None:
                raise ImageError(f"hard link target {_short(m.linkname)} does not exist")
            if not stat.S_ISREG(st.st_mode):
                raise ImageError(f"hard link target {_short(m.linkname)} is not a regular "
                                 f"file ({_kind(st.st_mode)}); refused")
            if (*target_parent, target[-1]) == path:
                return  # a link to itself: nothing to do
            _remove(parent_fd, path[-1])
            os.link(target[-1], path[-1], src_dir_fd=target_fd, dst_dir_fd=parent_fd,
                    follow_symlinks=False)
        finally:
            os.close(target_fd)

    def _fifo(self, parent_fd: int, name: str, m: tarfile.TarInfo) -> None:
        _remove(parent_fd, name)
        os.mkfifo(name, 0o600, dir_fd=parent_fd)
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=parent_fd)
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                raise ImageError("FIFO replaced while unpacking")
            _set_attrs(fd, m)
        finally:
            os.close(fd)

    def _whiteout(self, parts: list[str]) -> None:
        """Hide lower layers' NAME (`.wh.NAME`) or all of the directory (`.wh..wh..opq`)."""
        base = parts[-1]
        opened = self.root.open_dir(parts[:-1], create=False)
        if opened is None:
            return  # nothing below to hide
        parent_fd, parent = opened
        try:
            if base == OPAQUE:
                self._clear_lower(parent_fd, parent)
            elif base.startswith(WHITEOUT + WHITEOUT):
                return  # other AUFS metadata (.wh..wh.plnk etc.): ignored, as docker does
            else:
                name = base[len(WHITEOUT):]
                if name in ("", ".", ".."):
                    raise ImageError("whiteout of nothing")
                if (*parent, name) not in self.created:
                    _remove(parent_fd, name)
        finally:
            os.close(parent_fd)

    def _clear_lower(self, dir_fd: int, path: tuple[str, ...]) -> None:
        for name in os.listdir(dir_fd):
            child = (*path, name)
            if child not in self.created:
                _remove(dir_fd, name)
                continue
            st = _lstat(name, dir_fd)
            if st is not None and stat.S_ISDIR(st.st_mode):
                fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    self._clear_lower(fd, child)
                finally:
                    os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def _short(text: str) -> str:
    text = repr(text)
    return text if len(text) <= 120 else text[:117] + "..."


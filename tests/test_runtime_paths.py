"""Paths inside trees a container or an image controls (host.py), the image's user database
(userdb.py), podnetd's log rotation (logrotate.py) and the log reader (logs.py): real files,
no runc."""
import asyncio
import errno
import os
import stat

import pytest
from hypothesis import given, settings, strategies as st

from podnetd.runtime import host, logrotate, logs, userdb


class LogFile:
    """A container log as conmon writes it and podnetd rotates it: records are appended to
    FILE; after each write the Rotator checks the size (a real logrotate.Rotator, asking
    through a real FIFO, read here as conmon reads its ctl FIFO) and FILE is reopened when
    asked."""

    def __init__(self, path: str, max_size: int, max_files: int):
        self.path = path
        self.rotator = logrotate.Rotator(max_size, max_files)
        ctl = path + ".ctl"
        os.mkfifo(ctl)
        self.ctl = os.open(ctl, os.O_RDONLY | os.O_NONBLOCK)
        self.rotator.watch(path, ctl)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, records: list[bytes]) -> None:
        os.write(self.fd, b"".join(records))
        self.rotator.check()
        try:
            asked = os.read(self.ctl, 100)
        except BlockingIOError:
            asked = b""
        if asked:
            assert asked == logrotate.REOPEN_LOGS
            os.close(self.fd)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


@pytest.fixture(params=["openat2", "per-component"])
def resolver(request, monkeypatch):
    """Both ways of resolving: openat2 (5.6+) and the O_NOFOLLOW walk of older kernels."""
    monkeypatch.setattr(host, "_openat2_missing", request.param == "per-component")
    return request.param


@pytest.fixture
def volume(tmp_path):
    """A volume as a container leaves it: links out (absolute and relative), a link inside,
    a FIFO, a directory and a file."""
    vol = tmp_path / "vol"
    (vol / "d" / "e").mkdir(parents=True)
    (vol / "d" / "file").write_text("inside\n")
    (tmp_path / "host-secret").write_text("host\n")
    os.symlink("/", vol / "root")
    os.symlink("../host-secret", vol / "up")
    os.symlink("d", vol / "inner")
    os.symlink(str(tmp_path), vol / "d" / "abs")
    os.mkfifo(vol / "fifo")
    return vol


def _open(vol, sub, **kw):
    root = host.open_dir_nofollow(str(vol))
    try:
        return host.open_beneath(root, sub, **kw)
    finally:
        os.close(root)


def _kind(fd):
    try:
        return host.fd_kind(fd)
    finally:
        os.close(fd)


def test_sub_path_inside_the_volume_opens(volume, resolver):
    assert _kind(_open(volume, "d")) == "directory"
    assert _kind(_open(volume, "./d//e/")) == "directory"
    assert _kind(_open(volume, "d/file")) == "file"
    assert _kind(_open(volume, "fifo")) == "fifo"  # opened as O_PATH: never blocks


@pytest.mark.parametrize("sub, code", [
    ("root", errno.ELOOP), ("up", errno.ELOOP), ("inner/file", errno.ELOOP),
    ("d/abs/host-secret", errno.ELOOP), ("root/etc", errno.ELOOP),
    ("../host-secret", errno.EINVAL), ("d/../../host-secret", errno.EINVAL),
    ("/etc", errno.EINVAL), ("missing/x", errno.ENOENT)])
def test_sub_path_with_a_link_dotdot_or_absolute_is_refused(volume, resolver, sub, code):
    with pytest.raises(host.UnsafePath) as e:
        _open(volume, sub)
    assert e.value.errno == code, str(e.value)
    assert sub in str(e.value)


def test_make_dirs_beneath_creates_with_mode_and_never_through_a_link(volume, resolver):
    root = host.open_dir_nofollow(str(volume))
    old = os.umask(0o077)
    try:
        host.make_dirs_beneath(root, "new/deeper", 0o777)
        assert stat.S_IMODE(os.stat(volume / "new" / "deeper").st_mode) == 0o777
        with pytest.raises(host.UnsafePath) as e:
            host.make_dirs_beneath(root, "root/tmp/evil", 0o777)
        assert e.value.errno in (errno.ELOOP, errno.ENOTDIR)
        assert not os.path.exists("/tmp/evil")
        with pytest.raises(host.UnsafePath):
            host.make_dirs_beneath(root, "../outside", 0o777)
    finally:
        os.umask(old)
        os.close(root)
    assert not (volume.parent / "outside").exists()


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n")
    (tmp_path / "shadow").write_text("app:x:4242:4242::/:/bin/sh\n")
    return root


def test_image_file_read_as_the_container_sees_it(rootfs, resolver):
    assert b"app:x:1000" in host.read_regular_beneath(str(rootfs), "etc/passwd", 2**20)
    # a link inside the image that stays inside works with openat2 (the walk refuses links)
    os.rename(rootfs / "etc" / "passwd", rootfs / "etc" / "passwd.real")
    os.symlink("/etc/passwd.real", rootfs / "etc" / "passwd")
    if resolver == "openat2":
        assert b"app:x:1000" in host.read_regular_beneath(str(rootfs), "etc/passwd", 2**20)
    else:
        with pytest.raises(host.UnsafePath):
            host.read_regular_beneath(str(rootfs), "etc/passwd", 2**20)


@pytest.mark.parametrize("make, why", [
    (lambda r, t: os.mkfifo(r / "etc" / "passwd"), "not a regular file"),
    (lambda r, t: os.mkdir(r / "etc" / "passwd"), "not a regular file"),
    (lambda r, t: os.symlink(str(t / "shadow"), r / "etc" / "passwd"), ""),
    (lambda r, t: os.symlink("../../shadow", r / "etc" / "passwd"), ""),
    (lambda r, t: os.symlink("/proc/self/root/" + str(t / "shadow"), r / "etc" / "passwd"), ""),
    (lambda r, t: (r / "etc" / "passwd").write_bytes(b"x" * (2**20 + 1)), "larger than"),
])
def test_hostile_image_files_are_refused_without_blocking(rootfs, resolver, make, why):
    (rootfs / "etc" / "passwd").unlink()
    make(rootfs, rootfs.parent)
    with pytest.raises(host.UnsafePath) as e:
        host.read_regular_beneath(str(rootfs), "etc/passwd", 2**20)
    assert why in str(e.value)


def test_user_database_parsing():
    db = b"# comment\n\nroot:x:0:0::/:/bin/sh\r\nbad:x:-1:0\nbig:x:4294967295:0\napp:x:1000\n"
    assert userdb.find_id(db, "root") == 0
    assert userdb.find_id(db, "app") == 1000
    assert userdb.find_id(db, "bad") is None and userdb.find_id(db, "big") is None
    assert userdb.find_id(db, "nobody") is None
    assert userdb.split_user("app:grp") == ("app", "grp")
    assert userdb.numeric_id("1000") == 1000 and userdb.numeric_id("app") is None
    assert userdb.numeric_id("١٢") is None  # unicode digits are a name, not an id
    for bad in ("99999999999", "4294967295"):
        with pytest.raises(userdb.UserError, match="out of range"):
            userdb.numeric_id(bad)
    with pytest.raises(userdb.UserError):
        userdb.split_user(":grp")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.text(max_size=40))
def test_user_database_fuzz(data, name):
    value = userdb.find_id(data, name)
    assert value is None or 0 <= value <= userdb.MAX_ID
    try:
        user, group = userdb.split_user(name)
        for part in (user, group):
            if part:
                v = userdb.numeric_id(part)
                assert v is None or 0 <= v <= userdb.MAX_ID
    except userdb.UserError:
        pass


# -- logs ---------------------------------------------------------------------------------

def _records(n, width=40, start=0):
    return [b"2026-01-01T00:00:00.000000000Z stdout F %s\n" % (b"%d-" % i).ljust(width, b"x")
            for i in range(start, start + n)]


def test_rotator_renames_at_the_size_keeps_max_files_and_asks_for_a_reopen(tmp_path):
    path = str(tmp_path / "0.log")
    log = LogFile(path, max_size=4096, max_files=3)
    records = _records(1000)
    for i in range(0, len(records), 7):
        log.write(records[i:i + 7])
    files = logs.rotated(path)
    assert [os.path.basename(f) for f in files] == ["0.log.2", "0.log.1", "0.log"]
    # rotated once past the size: at most one write (7 records) over it
    assert all(os.path.getsize(f) < 4096 + len(b"".join(records[:7])) for f in files)
    kept = b"".join(open(f, "rb").read() for f in files)
    assert records[-1] in kept and records[0] not in kept
    assert kept == b"".join(records)[-len(kept):]  # whole records, none lost in between


def _collect(path, **kw):
    async def run():
        return b"".join([chunk async for chunk in logs.read(path, **kw)])
    return asyncio.run(run())


def test_reader_reads_rotated_files_oldest_first_and_tails(tmp_path):
    path = str(tmp_path / "0.log")
    log = LogFile(path, max_size=8192, max_files=5)
    records = _records(500)
    log.write(records)
    kept = b"".join(records)[-sum(os.path.getsize(f) for f in logs.rotated(path)):]
    assert _collect(path, follow=False, running=lambda: False) == kept
    for n in (0, 1, 7, 150, 10**6):
        want = b"".join(logs.records(kept)[-n:]) if n else b""
        assert _collect(path, follow=False, running=lambda: False, tail=n) == want, n


def test_follow_reads_across_rotations_without_loss(tmp_path):
    path = str(tmp_path / "0.log")
    log = LogFile(path, max_size=4096, max_files=4)
    records = _records(600)

    async def writer():
        # about a third of a file per step, under two files per poll of the reader: the
        # rotated files it has not read yet are all still kept
        for i in range(0, len(records), 20):
            log.write(records[i:i + 20])
            await asyncio.sleep(logs.POLL / 5)

    async def run():
        w = asyncio.ensure_future(writer())
        got = [c async for c in logs.read(path, follow=True,
                                          running=lambda: not w.done())]
        await w
        return b"".join(got)
    assert asyncio.run(run()) == b"".join(records)


def test_carriage_returns_stay_in_the_text(tmp_path):
    path = str(tmp_path / "0.log")
    LogFile(path, 2**20, 2).write([b"2026-01-01T00:00:00Z stdout F 10%\r50%\r100%\n"])
    raw = _collect(path, follow=False, running=lambda: False)
    assert [logs.parse_line(r, False) for r in logs.records(raw)] == [b"10%\r50%\r100%\n"]


def test_parse_line():
    assert logs.parse_line(b"2026-01-01T00:00:00Z stdout F a b\n", False) == b"a b\n"
    assert logs.parse_line(b"2026-01-01T00:00:00Z stdout P a", True) == \
        b"2026-01-01T00:00:00Z a"
    assert logs.parse_line(b"garbage\n", False) == b"garbage\n"


def test_sub_path_resolution_races_a_swapping_container(tmp_path, resolver):
    """A container swapping vol/x between a directory and a link to the host, as fast as it
    can, while the subPath is resolved: every resolution gives the directory inside the
    volume or a refusal, never the host's directory."""
    import threading
    vol, outside = tmp_path / "vol", tmp_path / "outside"
    vol.mkdir()
    outside.mkdir()
    inside = vol / "real"
    inside.mkdir()
    (inside / "d").mkdir()
    inside_ino = os.stat(inside / "d").st_ino
    stop = threading.Event()
    swaps = []

    def swapper():
        x, new = vol / "x", vol / "x.new"
        while not stop.is_set():
            os.symlink(str(outside), new)
            os.replace(new, x)           # x: a link out of the volume
            os.unlink(x)
            os.rename(inside, x)         # x: the real directory
            os.rename(x, inside)         # x: nothing
            swaps.append(1)
    t = threading.Thread(target=swapper)
    t.start()
    seen = {"ok": 0, "refused": 0}
    try:
        root = host.open_dir_nofollow(str(vol))
        for _ in range(3000):
            for sub in ("x/d", "x"):
                try:
                    fd = host.open_beneath(root, sub)
                except host.UnsafePath:
                    seen["refused"] += 1
                    continue
                st = os.fstat(fd)
                os.close(fd)
                assert st.st_ino != os.stat(outside).st_ino
                if sub == "x/d":
                    assert st.st_ino == inside_ino
                seen["ok"] += 1
        os.close(root)
    finally:
        stop.set()
        t.join()
    assert swaps and seen["refused"] > 0


def test_disk_usage_counts_the_tree_only(tmp_path):
    vol, outside = tmp_path / "vol", tmp_path / "outside"
    (vol / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (outside / "big").write_bytes(os.urandom(4 * 2**20))
    (vol / "a" / "b" / "f").write_bytes(os.urandom(2**20))
    os.link(vol / "a" / "b" / "f", vol / "a" / "hard")   # one inode, counted once
    os.symlink(str(outside), vol / "out")                 # never followed
    os.symlink(str(outside / "big"), vol / "a" / "big")
    used = host.disk_usage(str(vol), 2**40)
    assert 2**20 <= used < 2**20 + 256 * 1024
    assert host.disk_usage(str(vol), 1000) > 1000        # stops early, still says "over"
    with pytest.raises(OSError):
        host.disk_usage(str(vol / "out"), 2**40)         # the volume itself is never a link


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"_")),
                         max_size=6), min_size=1, max_size=4),
       st.booleans(), st.integers(min_value=0, max_value=30))
def test_tail_matches_the_last_lines_of_the_files(tmp_path_factory, files, open_end, n):
    """Any split of records over rotated files (each ending with a newline, the current one
    maybe mid-record): --tail N gives exactly the last N records of their concatenation."""
    d = tmp_path_factory.mktemp("tail")
    path = str(d / "0.log")
    blobs = [b"".join(r + b"\n" for r in recs) for recs in files]
    if open_end:
        blobs[-1] += b"partial"
    names = [f"{path}.{len(blobs) - 1 - i}" for i in range(len(blobs) - 1)] + [path]
    for name, blob in zip(names, blobs):
        with open(name, "wb") as f:
            f.write(blob)
    whole = b"".join(blobs)
    lines = logs.records(whole)
    assert b"".join(lines) == whole
    want = b"".join(lines[-n:]) if n else b""
    assert _collect(path, follow=False, running=lambda: False, tail=n) == want
    assert _collect(path, follow=False, running=lambda: False) == whole


def test_log_rotation_flags():
    from podnetd import config
    from podnetd.features import FEATURES
    from podnetd.runtime import log_size
    assert log_size("10Mi") == 10 * 2**20 and log_size("512Ki") == 512 * 1024
    assert log_size(1048576) == 2**20 and log_size("2M") == 2 * 10**6
    assert log_size("1e9") == 10**9                  # any Kubernetes quantity, as the kubelet
    for bad in ("", "10Q", "-1Mi", "0", "100", "2Ti", "1" * 40, "Mi", "0.5Ki", "1e400"):
        with pytest.raises(config.ConfigError, match="give a size from 1Ki"):
            log_size(bad)
    argv = ["--pod-cidr", "10.1.1.0/24", "--restart-backoff", "1", "--restart-backoff-max", "2",
            "--container-log-max-size", "1Mi"]
    parser = config.build_parser(FEATURES)
    rt = config.settings(parser.parse_args(argv), FEATURES).feature("runtime")
    assert (rt.container_log_max_size, rt.container_log_max_files) == (2**20, 5)
    with pytest.raises(config.ConfigError, match="between 2 and 1000"):
        config.settings(parser.parse_args([*argv, "--container-log-max-files", "1"]), FEATURES)


def test_conmon_utc_offset_is_shown_as_z():
    line = b"2026-01-01T00:00:00.000000001+00:00 stdout F x\n"
    assert logs.parse_line(line, True) == b"2026-01-01T00:00:00.000000001Z x\n"
    assert logs.parse_line(line, False) == b"x\n"

"""Container log rotation by podnetd, as the kubelet's container log manager does it with
CRI-O: conmon writes the CRI log FILE; when FILE has passed --container-log-max-size it is
renamed FILE.1 (FILE.1 -> FILE.2, ..., keeping --container-log-max-files files with FILE) and
conmon is asked through its control FIFO (message type 2, REOPEN_LOGS) to start a new FILE,
as CRI-O's ReopenContainerLog does. A file can pass the size by what was written within one
check period (kubelet checks every 10 s; podnetd every ROTATE_PERIOD)."""
import asyncio
import contextlib
import errno
import logging
import os

log = logging.getLogger(__name__)
ROTATE_PERIOD = 0.1          # seconds between size checks of running containers' logs
REOPEN_LOGS = b"2 0 0\n"     # conmon's ctl FIFO: <type> <height> <width>; 2 = reopen logs


def rotate_files(path: str, max_files: int) -> None:
    """FILE -> FILE.1, FILE.1 -> FILE.2 ...; the oldest beyond max_files is overwritten."""
    for n in range(max_files - 2, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}.{n}", f"{path}.{n + 1}")
    os.rename(path, f"{path}.1")


def ask_reopen(ctl_fifo: str) -> bool:
    """Ask the conmon behind ctl_fifo to reopen its log; False when nobody reads the FIFO."""
    try:
        fd = os.open(ctl_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno not in (errno.ENXIO, errno.ENOENT):
            log.warning("log reopen: %s: %s", ctl_fifo, e.strerror)
        return False
    try:
        os.write(fd, REOPEN_LOGS)
        return True
    except OSError as e:
        log.warning("log reopen: %s: %s", ctl_fifo, e.strerror)
        return False
    finally:
        os.close(fd)


class Rotator:
    def __init__(self, max_size: int, max_files: int):
        self.max_size, self.max_files = max_size, max_files
        self._watched: dict[str, str] = {}   # log path -> conmon's ctl FIFO

    def watch(self, path: str, ctl_fifo: str) -> None:
        self._watched[path] = ctl_fifo

    def unwatch(self, path: str) -> None:
        self._watched.pop(path, None)

    def check(self) -> None:
        """One pass: rotate each watched log that has reached the size. Cheap (one stat per
        running container); a rename and a FIFO write when it rotates."""
        for path, ctl in list(self._watched.items()):
            try:
                if os.stat(path).st_size < self.max_size:
                    continue
                rotate_files(path, self.max_files)
            except FileNotFoundError:   # rotated, conmon has not reopened it yet
                continue
            except OSError as e:
                log.warning("log rotation: %s: %s", path, e.strerror)
                continue
            ask_reopen(ctl)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(ROTATE_PERIOD)
            self.check()

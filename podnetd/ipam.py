"""Per-node IPAM and endpoint records, in SQLite (WAL) under the state dir.

Keyed by (container id, ifname). Each allocation is one committed transaction before any
kernel state exists, so a crash at any moment leaves either no record or a record that the
start-up reconcile can match against the kernel. WAL with synchronous=NORMAL is durable
against process crashes (kill -9); after a power loss the pods' veths are gone anyway and the
reconcile releases their records.

Freed addresses are not reused at once: allocation continues round-robin after the last
address handed out, as the reference host-local plugin does.
"""
import dataclasses
import ipaddress
import sqlite3
import threading
import time


class IpamError(Exception):
    pass


class PoolExhausted(IpamError):
    pass


@dataclasses.dataclass
class Record:
    container_id: str
    ifname: str
    address: str          # "10.88.0.5/24"
    netns: str = ""
    network: str = ""
    host_ifname: str = ""
    mac: str = ""
    mtu: int = 0
    created: float = 0.0
    state: str = "active"  # "releasing": detached, its veth being deleted; the address stays taken
    host_mac: str = ""    # not stored: read from the kernel when a result needs it

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    container_id TEXT NOT NULL,
    ifname TEXT NOT NULL,
    ip INTEGER NOT NULL UNIQUE,
    netns TEXT NOT NULL DEFAULT '',
    network TEXT NOT NULL DEFAULT '',
    host_ifname TEXT NOT NULL DEFAULT '',
    mac TEXT NOT NULL DEFAULT '',
    mtu INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    PRIMARY KEY (container_id, ifname)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "container_id, ifname, ip, netns, network, host_ifname, mac, mtu, created, state"


class Ipam:
    def __init__(self, db_path: str, pod_cidr: str, gateway: str):
        self.network = ipaddress.ip_network(pod_cidr)
        self.gateway = ipaddress.ip_address(gateway)
        if self.network.prefixlen > 30:
            raise IpamError(f"pod CIDR {pod_cidr} is too small: need at least a /30")
        self._first = int(self.network.network_address) + 1
        self._last = int(self.network.broadcast_address) - 1
        self._lock = threading.Lock()
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._check_cidr_unchanged(pod_cidr)

    def _check_cidr_unchanged(self, pod_cidr: str) -> None:
        outside = [r.address for r in self.records() if ipaddress.ip_address(r.ip) not in self.network]
        if outside:
            raise IpamError(f"the state dir holds {len(outside)} address(es) outside pod CIDR "
                            f"{pod_cidr} (e.g. {outside[0]}): the pod CIDR changed while pods "
                            f"exist; delete those pods or restore the old CIDR")
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('pod_cidr', ?)", (pod_cidr,))

    def close(self) -> None:
        self._db.close()

    @property
    def capacity(self) -> int:
        # the gateway takes one address of the usable range
        return self._last - self._first + 1 - (1 if self._first <= int(self.gateway) <= self._last else 0)

    def _row(self, row) -> Record:
        cid, ifname, ip, netns, network, host, mac, mtu, created, state = row
        return Record(cid, ifname, f"{ipaddress.ip_address(ip)}/{self.network.prefixlen}",
                      netns, network, host, mac, mtu, created, state)

    def get(self, container_id: str, ifname: str) -> Record | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM endpoints WHERE container_id=? AND ifname=?",
                                   (container_id, ifname)).fetchone()
        return self._row(row) if row else None

    def records(self) -> list[Record]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM endpoints ORDER BY ip").fetchall()
        return [self._row(r) for r in rows]

    def allocate(self, container_id: str, ifname: str, *, netns: str = "", network: str = "",
                 host_ifname: str = "", mac: str = "", mtu: int = 0) -> tuple[Record, bool]:
        """Reserve an address for (container_id, ifname). Returns (record, created); an existing
        reservation for the same key is returned as it is."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    f"SELECT {_COLUMNS} FROM endpoints WHERE container_id=? AND ifname=?",
                    (container_id, ifname)).fetchone()
                if row:
                    self._db.execute("COMMIT")
                    return self._row(row), False
                ip = self._next_free()
                created = time.time()
                self._db.execute(
                    f"INSERT INTO endpoints ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (container_id, ifname, ip, netns, network, host_ifname, mac, mtu, created,
                     "active"))
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('last_reserved', ?)", (str(ip),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Record(container_id, ifname, f"{ipaddress.ip_address(ip)}/{self.network.prefixlen}",
                      netns, network, host_ifname, mac, mtu, created), True

    def _next_free(self) -> int:
        used = {r[0] for r in self._db.execute("SELECT ip FROM endpoints")}
        used.add(int(self.gateway))
        row = self._db.execute("SELECT value FROM meta WHERE key='last_reserved'").fetchone()
        last = int(row[0]) if row else self._last
        size = self._last - self._first + 1
        start = last + 1 if self._first <= last + 1 <= self._last else self._first
        for step in range(size):
            candidate = self._first + (start - self._first + step) % size
            if candidate not in used:
                return candidate
        raise PoolExhausted(f"no free address left in {self.network} ({len(used) - 1} in use)")

    def update(self, container_id: str, ifname: str, **fields) -> None:
        allowed = {"netns", "network", "host_ifname", "mac", "mtu", "state"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"update: fields must be among {sorted(allowed)}")
        assignments = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE endpoints SET {assignments} WHERE container_id=? AND ifname=?",
                             (*fields.values(), container_id, ifname))

    def release(self, container_id: str, ifname: str) -> Record | None:
        """Free the address of (container_id, ifname); None when there was none."""
        with self._lock:
            row = self._db.execute(
                f"DELETE FROM endpoints WHERE container_id=? AND ifname=? RETURNING {_COLUMNS}",
                (container_id, ifname)).fetchall()
        return self._row(row[0]) if row else None

    def free_count(self) -> int:
        with self._lock:
            used = self._db.execute("SELECT COUNT(*) FROM endpoints").fetchone()[0]
        return self.capacity - used

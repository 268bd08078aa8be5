"""The cluster's store of record in etcd (v3, through its JSON gateway with the maintained etcd3gw
client), kept to the contract in base.py.

Keys: the API's key "/pods/default/web" lives in etcd at prefix + key, "/podnet/registry/pods/
default/web" (the prefix without a trailing "/"; API keys and prefixes always start with "/", so
no key of the registry is a prefix of another tree such as "/podnet/registry2"). The fabric's own
records (/podnet/nodes/) are outside it. Anything read back is checked: a key that is not under
the prefix, or not a well-formed key, is never returned (logged and skipped); values are bytes
the layer above validates.

Revisions are etcd's own: create/update/delete are transactions (compare create_revision == 0;
compare mod_revision == expected; a failed compare reads the key back to tell KeyNotFound from
Conflict), and a listing's revision is the header revision of the (paged, pinned) range.

Watches are etcd watches from after_revision + 1 with prev_kv (a DELETE event carries the value
it deleted). etcd3gw's own watch() cannot be used as it is: its reader thread drops the
compaction cancel (a watch from a compacted revision just never yields), swallows a broken stream
(the iterator blocks forever), and assumes one HTTP chunk = one JSON message. So the stream is
opened with the client's session and URL and read here, line by line, in a thread of its own that
feeds an asyncio-side queue. A watcher that falls more than `watch_backlog` events (or
`watch_backlog_bytes` of values) behind ends with StoreUnavailable (it resumes from its last
revision); a stream that stays silent is probed every `watch_probe` seconds on its own
endpoint, so a frozen or partitioned etcd ends the watch with StoreUnavailable instead of
hanging.

All blocking HTTP runs on the store's own thread pool, never on the event loop (and never on the
loop's default executor, which the rest of podnetd shares).
"""
import asyncio
import base64
import collections
import concurrent.futures
import json
import logging
import socket
import threading
import urllib.parse
from typing import AsyncIterator

import etcd3gw
import requests
import urllib3
from etcd3gw import exceptions as etcd_errors
from etcd3gw.utils import _encode  # base64 of bytes, as the gateway wants key and value fields

from ...aio import within
from .base import (Conflict, StoreError, KeyExists, KeyNotFound, KeyValue, ObjectStore, StoreUnavailable,
                   TooOld, WatchEvent)
from .keys import (InvalidKey, ValueTooLarge, check_key, check_revision, check_value,
                   prefix_end)

log = logging.getLogger(__name__)

# etcd calls in flight at once (a thread each: etcd3gw is blocking HTTP). etcd batches
# concurrent writes into one raft entry and one fsync, so a burst of creates is served side by
# side rather than queued behind eight.
CALLS_IN_FLIGHT = 16
LIST_PAGE = 500
MAX_WATCH_MESSAGE = 64 * 1024 * 1024  # one gateway message (a batch of events, base64)
COMPACTED = "required revision has been compacted"


def _int(value) -> int:
    """An int64 from the gateway (a string; omitted when 0)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _b64(value) -> bytes:
    return base64.b64decode(value or "", validate=False)


def _detail(e: Exception) -> str:
    text = getattr(e, "detail_text", None) or str(e) or type(e).__name__
    if not isinstance(text, str):
        text = repr(text)
    try:  # the gateway's error body: {"error": "...", "message": "...", "code": N}
        body = json.loads(text)
        if isinstance(body, dict):
            text = str(body.get("message") or body.get("error") or text)
    except ValueError:
        pass
    return text.splitlines()[0][:300] if text else type(e).__name__


def _never_sent(e: Exception) -> bool:
    """The request never reached etcd (no connection, TLS handshake refused): safe to send a
    write to another endpoint. After a timeout or a reset the write may have been applied."""
    cause = e.__context__ or e.__cause__
    if isinstance(cause, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)):
        return True
    if isinstance(cause, requests.exceptions.ConnectionError) and cause.args:
        reason = getattr(cause.args[0], "reason", None)
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


class _Answer(Exception):
    """etcd answered with an error that another endpoint would give too."""


class EtcdObjectStore(ObjectStore):
    name = "etcd"

    def __init__(self, endpoints: list[str], prefix: str = "/podnet/registry",
                 tls: tuple[str, str, str] | None = None, timeout: float = 5.0,
                 watch_backlog: int = 10000, watch_backlog_bytes: int = 64 * 1024 * 1024,
                 watch_probe: float = 10.0):
        """endpoints: etcd client URLs (http:// or https://); tls: (CA file, client certificate
        file, client key file) for https endpoints, any of them None (no CA file: the system's
        CAs; no certificate: no client certificate), or None; timeout: one request's."""
        if isinstance(endpoints, str):
            endpoints = [u.strip() for u in endpoints.split(",") if u.strip()]
        if not endpoints:
            raise ValueError("etcd store: no endpoint")
        root = check_key(prefix.rstrip("/") or "/", "etcd prefix")
        self._root = root.rstrip(b"/")  # "" keeps the API keys as they are
        self.prefix = self._root.decode()
        if tls is not None:
            ca, cert, key = tls
            if bool(cert) != bool(key):
                raise ValueError("etcd store: a client certificate needs its key, and a key its "
                                 "certificate")
            tls = (ca, cert, key) if (ca or cert) else None
        self.tls = tls
        self.timeout = timeout
        self.watch_backlog = watch_backlog
        self.watch_backlog_bytes = watch_backlog_bytes
        self.watch_probe = watch_probe
        self.endpoints = list(endpoints)
        for url in self.endpoints:
            u = urllib.parse.urlparse(url)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError(f"etcd endpoint {url!r}: not an http:// or https:// URL")
            if tls and u.scheme != "https":
                raise ValueError(f"etcd endpoint {url}: TLS files given for a plain http URL")
        if any(u.startswith("http://") for u in self.endpoints):
            log.warning("etcd store over plain http (%s): anyone on the path can read and write "
                        "the cluster's objects", ",".join(self.endpoints))
        self._clients = [self._client(u) for u in self.endpoints]
        self._current = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._streams: set[_WatchStream] = set()

    def _session(self) -> requests.Session:
        session = requests.Session()
        # Only the given CA and client certificate: not REQUESTS_CA_BUNDLE, proxies or .netrc.
        session.trust_env = False
        # a kept connection per call in flight (the default 10 would make a new TLS
        # connection for each call beyond them)
        for scheme in ("http://", "https://"):
            session.mount(scheme, requests.adapters.HTTPAdapter(pool_maxsize=CALLS_IN_FLIGHT))
        if self.tls:
            ca, cert, key = self.tls
            if ca:  # never None: requests takes verify=None as "do not verify"
                session.verify = ca
            if cert:
                session.cert = (cert, key)
        return session

    def _client(self, url: str, session: requests.Session | None = None) -> etcd3gw.Etcd3Client:
        u = urllib.parse.urlparse(url)
        return etcd3gw.Etcd3Client(host=u.hostname, port=u.port or 2379, protocol=u.scheme,
                                   timeout=self.timeout, api_path="/v3/",
                                   session=session or self._session())

    # -- calls ------------------------------------------------------------------------------

    def _call(self, what: str, fn, write: bool = False):
        """fn(client) on the endpoint that last answered, then the others. A write moves on only
        when it cannot have been applied."""
        failures = []
        for i in range(len(self._clients)):
            index = (self._current + i) % len(self._clients)
            try:
                result = fn(self._clients[index])
                self._current = index
                return result
            except etcd_errors.Etcd3Exception as e:
                detail = _detail(e)
                if COMPACTED in detail:
                    raise TooOld(f"etcd {what}: {detail}") from None
                if "request is too large" in detail:
                    raise ValueTooLarge(f"etcd {what}: {detail} (etcd's --max-request-bytes)") from None
                failures.append((self.endpoints[index], detail))
                if write and not _never_sent(e):
                    raise StoreUnavailable(f"etcd {self.endpoints[index]}: {what}: outcome unknown: "
                                           f"{detail}") from None
            except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
                # a body that is not the gateway's JSON: an endpoint that is not etcd
                failures.append((self.endpoints[index], f"{type(e).__name__}: {str(e)[:200]}"))
                if write:
                    raise StoreUnavailable(f"etcd {self.endpoints[index]}: {what}: outcome unknown: "
                                           f"{failures[-1][1]}") from None
        raise StoreUnavailable(f"etcd {what}: "
                               + "; ".join(f"{url}: {why}" for url, why in failures))

    async def _run(self, what: str, fn, write: bool = False):
        if self._executor is None:
            raise StoreUnavailable(f"etcd {what}: the store is not started")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, what, fn, write)
        except RuntimeError as e:  # executor shut down by close()
            raise StoreUnavailable(f"etcd {what}: {e}") from None

    def _key(self, key: str) -> bytes:
        return self._root + check_key(key)

    def _api_key(self, raw: bytes, start: bytes, end: bytes | None) -> str | None:
        """The API key of an etcd key read back, or None (logged) when it is not one of ours."""
        inside = raw >= start and (end is None or raw < end) and raw.startswith(self._root + b"/")
        try:
            key = raw[len(self._root):].decode("utf-8") if inside else None
            if key is not None:
                check_key(key)
        except (UnicodeDecodeError, InvalidKey):
            key = None
        if key is None:
            log.warning("etcd store: ignoring key %r: not a key under %s%s", raw[:200],
                        self.prefix, start[len(self._root):].decode("utf-8", "replace"))
        return key

    @staticmethod
    def _range(client, key: bytes, end: bytes | None = None, **extra) -> dict:
        body = {"key": _encode(key), **extra}
        if end is not None:
            body["range_end"] = _encode(end)
        return client.post(client.get_url("/kv/range"), json=body)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(CALLS_IN_FLIGHT, thread_name_prefix="etcd-store")
        await self.revision()

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        for stream in list(self._streams):  # its watches end as the SQLite store's do
            stream.fail(StoreUnavailable(f"etcd {stream.what}: the store is closed"))
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    # -- the contract -----------------------------------------------------------------------

    async def revision(self) -> int:
        return await self._run("revision", lambda c: _int(self._range(c, self._root or b"/")
                                                            ["header"]["revision"]))

    async def get(self, key: str) -> KeyValue:
        raw = self._key(key)
        kvs = await self._run(f"get {key}", lambda c: self._range(c, raw).get("kvs") or [])
        for kv in kvs:
            if _b64(kv.get("key")) == raw:
                return KeyValue(key, _b64(kv.get("value")), _int(kv.get("mod_revision")),
                                _int(kv.get("create_revision")))
        raise KeyNotFound(f"{key}: not found")

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        start = self._key(prefix)
        end = prefix_end(start)

        def listing(client):
            for _attempt in range(3):  # the pinned revision may be compacted between pages
                try:
                    return self._pages(client, start, end)
                except etcd_errors.Etcd3Exception as e:
                    if COMPACTED not in _detail(e):
                        raise
            return self._pages(client, start, end)
        found, revision = await self._run(f"list {prefix}", listing)
        items = []
        for kv in found:
            key = self._api_key(_b64(kv.get("key")), start, end)
            if key is not None:
                items.append(KeyValue(key, _b64(kv.get("value")), _int(kv.get("mod_revision")),
                                      _int(kv.get("create_revision"))))
        return items, revision

    def _pages(self, client, start: bytes, end: bytes | None):
        found, revision, key = [], 0, start
        while True:
            extra = {"limit": LIST_PAGE, **({"revision": revision} if revision else {})}
            answer = self._range(client, key, end if end is not None else b"\0", **extra)
            revision = revision or _int(answer["header"]["revision"])
            page = answer.get("kvs") or []
            found.extend(page)
            if not answer.get("more") or not page:
                return found, revision
            key = _b64(page[-1].get("key")) + b"\0"

    async def create(self, key: str, value: bytes) -> int:
        raw, value = self._key(key), check_value(key, value)
        k = _encode(raw)
        txn = {"compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
               "success": [{"request_put": {"key": k, "value": _encode(value)}}],
               "failure": []}
        answer = await self._run(f"create {key}", lambda c: c.transaction(txn), write=True)
        if not answer.get("succeeded"):
            raise KeyExists(f"{key}: already exists")
        return _int(answer["header"]["revision"])

    def _guarded(self, key: str, expected: int | None, success: list) -> dict:
        """A transaction that runs success if the key exists (at mod revision expected) and
        otherwise reads the key, to say which it was."""
        k = _encode(self._key(key))
        compare = [{"key": k, "result": "GREATER", "target": "CREATE", "create_revision": 0}]
        if expected is not None:
            compare.append({"key": k, "result": "EQUAL", "target": "MOD", "mod_revision": expected})
        return {"compare": compare, "success": success, "failure": [{"request_range": {"key": k}}]}

    @staticmethod
    def _refused(key: str, expected: int | None, answer: dict):
        responses = answer.get("responses") or [{}]
        kvs = (responses[0].get("response_range") or {}).get("kvs") or []
        if not kvs:
            return KeyNotFound(f"{key}: not found")
        return Conflict(f"{key}: modified at revision {_int(kvs[0].get('mod_revision'))}, "
                        f"not {expected}")

    async def update(self, key: str, value: bytes, expected_revision: int | None) -> int:
        raw, value = self._key(key), check_value(key, value)
        check_revision(key, expected_revision)
        txn = self._guarded(key, expected_revision,
                            [{"request_put": {"key": _encode(raw), "value": _encode(value)}}])
        answer = await self._run(f"update {key}", lambda c: c.transaction(txn), write=True)
        if not answer.get("succeeded"):
            raise self._refused(key, expected_revision, answer)
        return _int(answer["header"]["revision"])

    async def delete(self, key: str, expected_revision: int | None) -> KeyValue:
        raw = self._key(key)
        check_revision(key, expected_revision)
        txn = self._guarded(key, expected_revision,
                            [{"request_delete_range": {"key": _encode(raw), "prev_kv": True}}])
        answer = await self._run(f"delete {key}", lambda c: c.transaction(txn), write=True)
        if not answer.get("succeeded"):
            raise self._refused(key, expected_revision, answer)
        deleted = (answer.get("responses") or [{}])[0].get("response_delete_range") or {}
        prev = (deleted.get("prev_kvs") or [{}])[0]
        return KeyValue(key, _b64(prev.get("value")), _int(answer["header"]["revision"]),
                        _int(prev.get("create_revision")))

    async def watch(self, prefix: str, after_revision: int) -> AsyncIterator[WatchEvent]:
        start = self._key(prefix)
        if isinstance(after_revision, bool) or not isinstance(after_revision, int) or after_revision < 0:
            raise ValueError(f"watch {prefix}: revision {after_revision!r} is not a revision")
        if self._executor is None:
            raise StoreUnavailable(f"etcd watch {prefix}: the store is not started")
        stream = _WatchStream(self, prefix, start, prefix_end(start), after_revision)
        stream.open(asyncio.get_running_loop())
        self._streams.add(stream)
        try:
            while True:
                for event in await stream.next_batch():
                    yield event
        finally:
            self._streams.discard(stream)
            stream.close()


class _WatchStream:
    """One etcd watch: a thread reads the gateway's stream and queues batches of events (or the
    error that ended it) for the iterator on the event loop."""

    def __init__(self, store: EtcdObjectStore, prefix: str, start: bytes, end: bytes | None,
                 after: int):
        self.store = store
        self.prefix = prefix
        self.start, self.end = start, end
        self.after = after
        self.what = f"watch {prefix} from revision {after}"
        self._lock = threading.Lock()
        self._queue: collections.deque = collections.deque()
        self._pending = 0  # events queued and not yet taken
        self._pending_bytes = 0  # and the bytes of their values
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = threading.Event()
        self._response: requests.Response | None = None
        self._client: etcd3gw.Etcd3Client | None = None
        self._endpoint = ""

    # -- the reader thread ------------------------------------------------------------------

    def open(self, loop) -> None:
        self._loop = loop
        threading.Thread(target=self._read, name="etcd-watch", daemon=True).start()

    def _put(self, item, events: int = 0, size: int = 0) -> bool:
        """Queue an item for the iterator; False when the watcher is too far behind (a batch is
        always taken when nothing is queued: etcd may send a catch-up batch of any size)."""
        with self._lock:
            if self._pending and (self._pending + events > self.store.watch_backlog
                                  or self._pending_bytes + size > self.store.watch_backlog_bytes):
                return False
            self._queue.append(item)
            self._pending += events
            self._pending_bytes += size
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is gone
            self._closed.set()
        return True

    def _connect(self) -> requests.Response:
        store = self.store
        body = {"create_request": {"key": _encode(self.start),
                                   "range_end": _encode(self.end if self.end is not None else b"\0"),
                                   "start_revision": self.after + 1, "prev_kv": True}}
        failures = []
        for i in range(len(store.endpoints)):
            index = (store._current + i) % len(store.endpoints)
            url = store.endpoints[index]
            # a session of its own: the stream holds its connection for as long as it lasts
            client = store._client(url)
            try:
                # connect timeout only: a watch is silent for as long as nothing changes
                response = client.session.post(client.get_url("/watch"), json=body, stream=True,
                                               timeout=(store.timeout, None))
            except requests.exceptions.RequestException as e:
                client.session.close()
                failures.append(f"{url}: {type(e).__name__}: {str(e)[:200]}")
                continue
            if response.status_code != 200:
                failures.append(f"{url}: HTTP {response.status_code} {response.text[:200]}")
                response.close()
                client.session.close()
                continue
            self._client, self._endpoint = client, url
            return response
        raise StoreUnavailable(f"etcd {self.what}: " + "; ".join(failures))

    def _read(self) -> None:
        try:
            self._response = self._connect()
            if self._closed.is_set():
                return
            self._stream(self._response)
            if not self._closed.is_set():
                raise StoreUnavailable(f"etcd {self._endpoint}: {self.what}: etcd closed the stream")
        except (TooOld, StoreUnavailable) as e:
            if not self._closed.is_set():
                self._put(e)
        except Exception as e:  # noqa: BLE001 - a broken stream, whatever broke it, ends the watch
            if not self._closed.is_set():
                self._put(StoreUnavailable(f"etcd {self._endpoint}: {self.what}: "
                                           f"{type(e).__name__}: {str(e)[:200]}"))
        finally:
            self._release()

    def _stream(self, response: requests.Response) -> None:
        buffer = b""
        # chunk_size=None: whatever has arrived, not a fixed amount (an event must not wait for
        # the next one to fill a buffer); messages are split on newlines here, as the gateway
        # may cut or join them across chunks.
        for chunk in response.iter_content(chunk_size=None):
            if self._closed.is_set():
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip() and not self._message(line):
                    return
            if len(buffer) > MAX_WATCH_MESSAGE:
                raise StoreUnavailable(f"etcd {self._endpoint}: {self.what}: a message of more "
                                       f"than {MAX_WATCH_MESSAGE} bytes")

    def _message(self, line: bytes) -> bool:
        """Handle one message of the stream; False when the stream is over."""
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("a message that is not a JSON object")
        if "error" in message:
            error = message["error"]
            text = error.get("message") if isinstance(error, dict) else error
            raise StoreUnavailable(f"etcd {self._endpoint}: {self.what}: {str(text)[:300]}")
        result = message.get("result") or {}
        compacted = _int(result.get("compact_revision"))
        if compacted:
            raise TooOld(f"etcd {self.what}: the history before revision {compacted} is gone "
                         f"(compacted)")
        if result.get("canceled"):
            raise StoreUnavailable(f"etcd {self._endpoint}: {self.what}: canceled: "
                                   f"{str(result.get('cancel_reason'))[:300]}")
        events = []
        for raw in result.get("events") or []:
            event = self._event(raw)
            if event is not None:
                events.append(event)
        if events and not self._put(events, len(events), sum(len(e.value) for e in events)):
            raise StoreUnavailable(f"etcd {self.what}: the watcher fell more than "
                                   f"{self.store.watch_backlog} events or "
                                   f"{self.store.watch_backlog_bytes} bytes behind; resume "
                                   f"from its last revision")
        return True

    def _event(self, raw: dict) -> WatchEvent | None:
        kv = raw.get("kv") or {}
        key = self.store._api_key(_b64(kv.get("key")), self.start, self.end)
        if key is None:
            return None
        revision = _int(kv.get("mod_revision"))
        if raw.get("type") == "DELETE":
            prev = raw.get("prev_kv") or {}
            return WatchEvent("DELETE", key, _b64(prev.get("value")), revision)
        # PUT is the enum's zero: the gateway leaves the field out
        return WatchEvent("PUT", key, _b64(kv.get("value")), revision,
                          _int(kv.get("create_revision")) == revision)

    def _release(self) -> None:
        with self._lock:
            response, self._response = self._response, None
            client = self._client
        if response is not None:
            response.close()
        if client is not None:
            client.session.close()

    def fail(self, error: StoreError) -> None:
        """End the watch with error (from the loop), after what is queued."""
        if not self._closed.is_set():
            self._put(error)
        self.close()

    def close(self) -> None:
        """End the watch (from the loop): shut the socket so the reader's blocking read returns."""
        self._closed.set()
        response = self._response
        connection = getattr(getattr(response, "raw", None), "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                # socket.shutdown, not SSLSocket's (which would drop the TLS object under the
                # reader): just the syscall, so the reader's recv returns.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    # -- the iterator's side ----------------------------------------------------------------

    async def next_batch(self) -> list[WatchEvent]:
        while True:
            self._ready.clear()
            with self._lock:
                item = self._queue.popleft() if self._queue else None
                if isinstance(item, list):
                    self._pending -= len(item)
                    self._pending_bytes -= sum(len(e.value) for e in item)
            if isinstance(item, list):
                return item
            if isinstance(item, Exception):
                raise item
            try:
                await within(self._ready.wait(), self.store.watch_probe)
            except asyncio.TimeoutError:
                await self._probe()

    async def _probe(self) -> None:
        """A silent stream: is its etcd still answering? (A frozen or cut-off etcd leaves the
        connection open and says nothing.)"""
        client = self._client
        if client is None:
            return  # still connecting; the connect has its own timeout
        store = self.store
        try:
            await asyncio.get_running_loop().run_in_executor(
                store._executor, lambda: store._range(client, store._root or b"/", keys_only=True))
        except (etcd_errors.Etcd3Exception, OSError, ValueError, RuntimeError, TypeError) as e:
            raise StoreUnavailable(f"etcd {self._endpoint}: {self.what}: etcd does not answer: "
                                   f"{_detail(e)}") from None

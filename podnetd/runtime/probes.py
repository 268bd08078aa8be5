"""Probe and hook handlers (exec, httpGet, tcpSocket, sleep), as kubelet runs them: exec inside
the container, network checks from the node to the pod IP."""
import asyncio

from ..aio import within
from . import oci


def resolve_port(port, container: dict) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    raise ValueError(f"no port named {port!r}")


async def run_handler(handler: dict, *, runtime: str, cid: str, container: dict, pod_ip: str,
                      timeout: float) -> tuple[bool, str]:
    """(success, message) of one probe or hook handler."""
    try:
        if "exec" in handler:
            rc, out, err = await oci.exec_(runtime, cid, handler["exec"]["command"],
                                           timeout=timeout)
            text = (out + err).decode(errors="replace").strip()[-200:]
            return rc == 0, f"exit {rc}" + (f": {text}" if text else "")
        if "sleep" in handler:
            await asyncio.sleep(min(handler["sleep"]["seconds"], timeout))
            return True, "slept"
        if "tcpSocket" in handler:
            h = handler["tcpSocket"]
            host = h.get("host") or pod_ip or "127.0.0.1"
            port = resolve_port(h["port"], container)
            _, writer = await within(asyncio.open_connection(host, port), timeout)
            writer.close()
            return True, f"connected to {host}:{port}"
        if "httpGet" in handler:
            return await within(_http_get(handler["httpGet"], container, pod_ip),
                                          timeout)
    except asyncio.TimeoutError:
        return False, f"timed out after {timeout:g}s"
    except (OSError, ValueError) as e:
        return False, str(e)
    return False, "no handler"


async def _http_get(h: dict, container: dict, pod_ip: str) -> tuple[bool, str]:
    host = h.get("host") or pod_ip or "127.0.0.1"
    port = resolve_port(h["port"], container)
    path = h.get("path") or "/"
    reader, writer = await asyncio.open_connection(host, port)
    try:
        headers = "".join(f"{x['name']}: {x.get('value', '')}\r\n"
                          for x in h.get("httpHeaders") or [])
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: "
                     f"podnet-probe/1.0\r\n{headers}\r\n".encode())
        await writer.drain()
        line = (await reader.readline()).decode(errors="replace").strip()
    finally:
        writer.close()
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, f"bad HTTP response {line[:80]!r}"
    code = int(parts[1])
    return 200 <= code < 400, f"HTTP {code} from {host}:{port}{path}"

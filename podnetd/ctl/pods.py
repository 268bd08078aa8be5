"""podnetctl pod run|ls|get|describe|logs|exec|stop|rm and image import|list|rm."""
import argparse
import json
import os
import sys

import grpc

from ..api.podnet.v1 import pods_pb2, pods_pb2_grpc
from ..apiconv import MAX_DURATION_SECONDS, duration, unix_seconds
from . import output
from .client import CtlError, call, channel


def _stub(args):
    return pods_pb2_grpc.PodServiceStub(channel(args.socket))


def _ref(args, request_type):
    """The request of a call about one pod (GetPodRequest, StopPodRequest, ...)."""
    return request_type(name=args.name, namespace=args.namespace)


def _print_pod(doc: dict, fmt: str) -> None:
    if fmt == "json":
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        import yaml
        yaml.safe_dump(doc, sys.stdout, sort_keys=False, default_flow_style=False)


def cmd_run(args) -> int:
    try:
        if args.filename == "-":
            text = sys.stdin.read()
        else:
            with open(args.filename) as f:
                text = f.read()
    except OSError as e:
        raise CtlError(f"{args.filename}: {e.strerror}") from None
    resp = call(_stub(args).RunPod, pods_pb2.RunPodRequest(manifest=text), timeout=180)
    doc = json.loads(resp.pod_json)
    if args.output in ("json", "yaml"):
        _print_pod(doc, args.output)
    else:
        st = doc["status"]
        print(f"pod/{doc['metadata']['name']} created: {st['phase']}"
              + (f", IP {st['podIP']}" if st.get("podIP") else "")
              + (f" ({st['reason']}: see pod describe)" if st.get("reason") else ""))
    return 0


def cmd_ls(args) -> int:
    resp = call(_stub(args).ListPods, pods_pb2.ListPodsRequest())
    rows = [{"namespace": p.namespace, "name": p.name, "phase": p.phase, "status": p.status,
             "ready": p.ready, "restarts": p.restarts, "ip": p.ip, "node": p.node,
             "age": output.age(unix_seconds(p.create_time))} for p in resp.pods]
    output.emit(rows, [("NAME", "name"), ("PHASE", "phase"), ("READY", "ready"),
                       ("STATUS", "status"), ("RESTARTS", "restarts"), ("IP", "ip"),
                       ("NODE", "node"), ("AGE", "age")], args.output)
    return 0


def cmd_get(args) -> int:
    resp = call(_stub(args).GetPod, _ref(args, pods_pb2.GetPodRequest))
    doc = json.loads(resp.pod_json)
    if args.output == "table":
        st = doc["status"]
        cs = st.get("containerStatuses") or []
        row = {"name": doc["metadata"]["name"], "phase": st["phase"],
               "ready": f"{sum(1 for c in cs if c['ready'])}/{len(cs)}",
               "restarts": sum(c["restartCount"] for c in cs), "ip": st.get("podIP", "")}
        output.emit([row], [("NAME", "name"), ("READY", "ready"), ("PHASE", "phase"),
                            ("RESTARTS", "restarts"), ("IP", "ip")])
    else:
        _print_pod(doc, args.output)
    return 0


def _state_line(state: dict) -> str:
    for kind, body in (state or {}).items():
        detail = ", ".join(f"{k}={v}" for k, v in body.items() if k != "containerID")
        return f"{kind.capitalize()}" + (f" ({detail})" if detail else "")
    return "-"


def cmd_describe(args) -> int:
    resp = call(_stub(args).DescribePod, _ref(args, pods_pb2.DescribePodRequest))
    doc, events = json.loads(resp.pod_json), json.loads(resp.events_json)
    meta, spec, st = doc["metadata"], doc["spec"], doc["status"]
    out = [f"Name:         {meta['name']}", f"Namespace:    {meta['namespace']}",
           f"UID:          {meta['uid']}", f"Node:         {spec.get('nodeName', '')}",
           f"Start Time:   {st.get('startTime') or '-'}",
           f"Labels:       {', '.join(f'{k}={v}' for k, v in (meta.get('labels') or {}).items()) or '<none>'}",
           f"Status:       {st['phase']}" + (f" ({st['reason']})" if st.get("reason") else ""),
           f"IP:           {st.get('podIP') or '-'}"]
    for title, key in (("Init Containers", "initContainerStatuses"),
                       ("Containers", "containerStatuses")):
        statuses = st.get(key) or []
        if not statuses:
            continue
        out.append(f"{title}:")
        for c in statuses:
            out += [f"  {c['name']}:", f"    Container ID:  {c['containerID']}",
                    f"    Image:         {c['image']}",
                    f"    State:         {_state_line(c['state'])}",
                    f"    Last State:    {_state_line(c['lastState'])}",
                    f"    Ready:         {c['ready']}",
                    f"    Restart Count: {c['restartCount']}"]
    out.append("Conditions:")
    out += [f"  {c['type']:<28}{c['status']}" for c in st.get("conditions") or []]
    out.append("Events:")
    if not events:
        out.append("  <none>")
    else:
        out.append(f"  {'TYPE':<8} {'REASON':<24} {'AGE':<6} {'FROM':<12} MESSAGE")
        for e in events:
            src = f"c/{e['container']}" if e.get("container") else "podnetd"
            out.append(f"  {e['type']:<8} {e['reason']:<24} {output.age(e['time']):<6} {src:<12} "
                       f"{e['message']}")
    print("\n".join(out))
    return 0


def cmd_logs(args) -> int:
    req = pods_pb2.PodLogsRequest(name=args.name, namespace=args.namespace,
                                  container=args.container or "", follow=args.follow,
                                  previous=args.previous, timestamps=args.timestamps)
    if args.tail >= 0:
        req.tail_lines = args.tail
    try:
        # the log arrives in chunks of about 64 KiB: a deadline for the whole stream only
        # guards against a daemon that stopped answering
        for chunk in _stub(args).PodLogs(req, timeout=None if args.follow else 600):
            sys.stdout.buffer.write(chunk.data)
            sys.stdout.buffer.flush()
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            raise CtlError(f"cannot reach podnetd: {e.details()}") from None
        raise CtlError(f"{e.code().name.lower()}: {e.details()}") from None
    return 0


def cmd_exec(args) -> int:
    command = list(args.cmd)
    if not command:
        raise CtlError("pod exec: a command is required after --")
    stdin = b"" if sys.stdin.isatty() or not args.stdin else sys.stdin.buffer.read()
    try:
        timeout = duration(args.timeout)
    except ValueError as e:
        raise CtlError(f"pod exec: --timeout {e}") from None
    resp = call(_stub(args).ExecInPod, pods_pb2.ExecInPodRequest(
        name=args.name, namespace=args.namespace, container=args.container or "",
        command=command, stdin=stdin, timeout=timeout), timeout=None)
    sys.stdout.buffer.write(resp.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(resp.stderr)
    sys.stderr.buffer.flush()
    return resp.exit_code


def cmd_stop(args) -> int:
    if args.all:
        if args.name:
            raise CtlError("pod stop: give a pod name or --all, not both")
        request = pods_pb2.StopAllPodsRequest()
        if args.grace_period is not None:
            request.max_grace_period.CopyFrom(duration(args.grace_period))
        resp = call(_stub(args).StopAllPods, request, timeout=None)
        for key in resp.stopped:
            print(f"pod/{key} stopped")
        return 0
    if not args.name:
        raise CtlError("pod stop: give a pod name, or --all")
    if args.grace_period is not None:
        raise CtlError("pod stop: --grace-period goes with --all (a single pod stops with its "
                       "own terminationGracePeriodSeconds)")
    resp = call(_stub(args).StopPod, _ref(args, pods_pb2.StopPodRequest), timeout=None)
    print(f"pod/{args.name} stopped: {json.loads(resp.pod_json)['status']['phase']}")
    return 0


def grace_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_DURATION_SECONDS:  # also NaN and infinity
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds, 0 or more")
    return value


def tail_lines(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < -1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of lines, or -1 for all")
    return value


def cmd_rm(args) -> int:
    call(_stub(args).RemovePod, _ref(args, pods_pb2.RemovePodRequest), timeout=None)
    print(f"pod/{args.name} removed")
    return 0


def cmd_image_import(args) -> int:
    archive = os.path.abspath(args.archive)
    resp = call(_stub(args).ImportImage, pods_pb2.ImportImageRequest(
        name=args.name, archive=archive), timeout=600)
    print(f"{resp.image.name} {resp.image.id[:12]} ({resp.image.layers} layers)")
    return 0


def cmd_image_list(args) -> int:
    resp = call(_stub(args).ListImages, pods_pb2.ListImagesRequest())
    rows = [{"name": i.name, "id": i.id[:12], "size": f"{i.size / 2**20:.1f}MiB",
             "layers": i.layers, "age": output.age(unix_seconds(i.create_time))} for i in resp.images]
    output.emit(rows, [("IMAGE", "name"), ("ID", "id"), ("SIZE", "size"),
                       ("LAYERS", "layers"), ("AGE", "age")], args.output)
    return 0


def cmd_image_rm(args) -> int:
    call(_stub(args).RemoveImage, pods_pb2.RemoveImageRequest(name=args.name))
    print(f"image {args.name} removed")
    return 0


def register(sub, common) -> None:
    ns = argparse.ArgumentParser(add_help=False)
    ns.add_argument("-n", "--namespace", default="default")
    pod = sub.add_parser("pod", help="run and manage pods (Kubernetes Pod manifests)")
    psub = pod.add_subparsers(dest="pod_command", required=True, metavar="COMMAND")

    p = psub.add_parser("run", parents=[common], help="run a pod from a manifest")
    p.add_argument("-f", "--filename", required=True, help="YAML or JSON manifest ('-': stdin)")
    p.set_defaults(func=cmd_run)
    p = psub.add_parser("ls", aliases=["list"], parents=[common], help="the pods of this node")
    p.set_defaults(func=cmd_ls)
    for name, fn, helptext in (("get", cmd_get, "a pod as Kubernetes shows it (-o yaml|json)"),
                               ("describe", cmd_describe, "states, conditions and events"),
                               ("rm", cmd_rm, "stop the pod if needed and forget it")):
        p = psub.add_parser(name, parents=[common, ns], help=helptext)
        p.add_argument("name")
        p.set_defaults(func=fn)
    p = psub.add_parser("stop", parents=[common, ns],
                        help="preStop, SIGTERM, grace, SIGKILL, teardown (--all: every pod, "
                             "as before a node shutdown)")
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true", help="stop every running pod of the node at once")
    p.add_argument("--grace-period", type=grace_seconds, metavar="SECONDS",
                   help="with --all: cap each pod's grace period (0: none; default: its own)")
    p.set_defaults(func=cmd_stop)
    p = psub.add_parser("logs", parents=[common, ns], help="a container's log")
    p.add_argument("name")
    p.add_argument("-c", "--container")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-p", "--previous", action="store_true")
    p.add_argument("--timestamps", action="store_true")
    p.add_argument("--tail", type=tail_lines, default=-1, metavar="N",
                   help="only the last N lines (-1: all)")
    p.set_defaults(func=cmd_logs)
    p = psub.add_parser("exec", parents=[common, ns], help="run a command in a container")
    p.add_argument("name")
    p.add_argument("-c", "--container")
    p.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    p.add_argument("--timeout", type=float, default=0, help="seconds (0: none)")
    p.add_argument("cmd", nargs="*", help="-- COMMAND [ARGS...]")
    p.set_defaults(func=cmd_exec)

    image = sub.add_parser("image", help="the offline image store")
    isub = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    p = isub.add_parser("import", parents=[common], help="import an OCI or docker archive")
    p.add_argument("name")
    p.add_argument("archive")
    p.set_defaults(func=cmd_image_import)
    p = isub.add_parser("list", aliases=["ls"], parents=[common], help="imported images")
    p.set_defaults(func=cmd_image_list)
    p = isub.add_parser("rm", parents=[common], help="remove an image")
    p.add_argument("name")
    p.set_defaults(func=cmd_image_rm)

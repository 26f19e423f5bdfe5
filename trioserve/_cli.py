"""The ``trioserve`` command: ``run`` an application, show a running instance's ``status``."""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trio

from ._deployment import Application, Deployment
from ._instance import open_serve


def load_target(spec: str) -> Application:
    """``module:attr`` or ``path/to/file.py:attr`` -> the Application it names (a Deployment
    is bound with no arguments). A file is imported as a module, by its name, from its
    folder, so replica processes can import its classes too."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"error: expected MODULE:ATTRIBUTE or FILE.py:ATTRIBUTE, got {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise SystemExit(f"error: no such file {module_name!r}")
        sys.path.insert(0, str(path.parent))
        module_name = path.stem
    else:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"error: cannot import {module_name!r}: {exc}") from None
    try:
        target: Any = getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"error: {module_name!r} has no attribute {attr!r}") from None
    if isinstance(target, Deployment):
        target = target.bind()
    if not isinstance(target, Application):
        raise SystemExit(
            f"error: {spec!r} is a {type(target).__name__}, not an application "
            "(make one with Deployment.bind())"
        )
    return target


async def _serve(app: Application, args: argparse.Namespace) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_serve(http_host=args.host, http_port=args.port) as instance:
            await instance.run(app, name=args.name, route_prefix=args.route_prefix)
            print(f"trioserve: application {args.name!r} at {instance.http_url}", flush=True)
            async for signum in signals:
                print(f"trioserve: {signal.Signals(signum).name}, draining", flush=True)
                break
    print("trioserve: stopped", flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    app = load_target(args.target)
    trio.run(_serve, app, args)
    return 0


def format_status(status: dict[str, Any]) -> str:
    """A readable table of applications, deployments and replicas."""
    apps = status.get("applications", {})
    if not apps:
        return "no applications"
    lines = []
    for name, app in apps.items():
        prefix = app.get("route_prefix")
        lines.append(f"application {name}  {app['status']}  route_prefix={prefix}")
        if app.get("message"):
            lines.append(f"  message: {app['message']}")
        lines.append(f"  {'DEPLOYMENT':<24}{'STATUS':<14}{'RUNNING/TARGET':<16}REPLICAS")
        for dep in app.get("deployments", {}).values():
            replicas = ", ".join(
                f"{r['replica_id']}(pid {r['pid']})" if r.get("pid") else r["replica_id"]
                for r in dep.get("replicas", [])
            )
            count = f"{dep['running_replicas']}/{dep['target_replicas']}"
            lines.append(f"  {dep['name']:<24}{dep['status']:<14}{count:<16}{replicas}")
            if dep.get("message"):
                lines.append(f"    message: {dep['message']}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    url = args.address.rstrip("/") + "/-/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: no trioserve instance answers at {args.address}: {exc}", file=sys.stderr)
        return 1
    print(format_status(status))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trioserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve an application until Ctrl-C or SIGTERM")
    run.add_argument("target", help="MODULE:APP or path/to/file.py:APP")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--name", default="default")
    run.add_argument("--route-prefix", default="/")
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help="show a running instance's applications")
    status.add_argument("--address", default="http://127.0.0.1:8000")
    status.set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``trioserve`` command: run applications, start an instance, build and deploy config
files, and show or stop a running instance.

Errors are printed on one line and exit non-zero; ``0`` means success.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import secrets
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

import msgspec
import trio

import actors.lowlevel
from actors import unwrap_lone_error

from ._deployment import Application, Deployment
from ._instance import ServeInstance, open_serve
from ._runtime_file import TokenNotFoundError, find_token, read_or_create_token_file
from ._schema import (
    ApplicationSchema,
    ServeConfig,
    build_config,
    config_json_schema,
    dump_config,
    load_config,
)
from .exceptions import ConfigError, ServeError

DEFAULT_CONTROL = "http://127.0.0.1:8265"


class CLIError(Exception):
    """An error the command prints on one line before exiting with 1."""


def _import_module(module_name: str) -> Any:
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise SystemExit(f"error: no such file {module_name!r}")
        sys.path.insert(0, str(path.parent))
        module_name = path.stem
    else:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"error: cannot import {module_name!r}: {exc}") from None


def load_target(spec: str, builder_args: dict[str, str] | None = None) -> Application:
    """``module:attr`` or ``path/to/file.py:attr`` -> the Application it names (a Deployment
    is bound with no arguments; a builder function is called with ``builder_args``). A file
    is imported as a module, by its name, from its folder, so replica processes can import
    its classes too."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(
            f"error: expected MODULE:ATTRIBUTE or FILE.py:ATTRIBUTE (or a config file), "
            f"got {spec!r}"
        )
    module = _import_module(module_name)
    try:
        target: Any = getattr(module, attr)
    except AttributeError:
        shown = Path(module_name).stem if module_name.endswith(".py") else module_name
        raise SystemExit(f"error: {shown!r} has no attribute {attr!r}") from None
    if isinstance(target, Deployment):
        target = target.bind()
    elif inspect.isfunction(target):
        target = target(dict(builder_args or {}))
    elif builder_args:
        raise SystemExit(f"error: {spec!r} is not a builder function; it takes no key=value")
    if not isinstance(target, Application):
        raise SystemExit(
            f"error: {spec!r} is a {type(target).__name__}, not an application "
            "(make one with Deployment.bind())"
        )
    return target


def _module_form(spec: str) -> str:
    """``path/to/file.py:app`` -> ``file:app`` (``load_target`` put its folder on sys.path)."""
    module, _, attr = spec.rpartition(":")
    if module.endswith(".py"):
        return f"{Path(module).stem}:{attr}"
    return spec


def _is_config(target: str) -> bool:
    return target.endswith((".yaml", ".yml", ".json"))


def parse_targets(words: list[str]) -> list[tuple[str, dict[str, str]]]:
    """``module:app key=value ... other:app ...`` -> targets with their builder arguments."""
    targets: list[tuple[str, dict[str, str]]] = []
    for word in words:
        if "=" in word and ":" not in word.split("=", 1)[0]:
            if not targets:
                raise SystemExit(f"error: {word!r} comes before any MODULE:APP")
            key, _, value = word.partition("=")
            targets[-1][1][key] = value
        else:
            targets.append((word, {}))
    return targets


def _run_config(args: argparse.Namespace) -> ServeConfig:
    """The config ``trioserve run`` serves: a config file, or the targets as applications."""
    if len(args.target) == 1 and _is_config(args.target[0]):
        # import paths resolve from the working directory and the config file's folder
        sys.path[:0] = [str(Path.cwd()), str(Path(args.target[0]).resolve().parent)]
        try:
            return load_config(args.target[0])
        except ConfigError as exc:
            raise SystemExit(f"error: {args.target[0]}: {exc}") from None
    targets = parse_targets(args.target)
    if len(targets) > 1 and args.name != "default":
        raise SystemExit("error: --name names one application; several targets are named by attr")
    apps = []
    for i, (spec, builder_args) in enumerate(targets):
        load_target(spec, builder_args)  # fail early, with the CLI's messages
        spec = _module_form(spec)
        name = args.name if len(targets) == 1 else spec.rpartition(":")[2]
        prefix = args.route_prefix if i == 0 else f"/{name}"
        apps.append(
            ApplicationSchema(
                name=name, route_prefix=prefix, import_path=spec, args=dict(builder_args)
            )
        )
    return ServeConfig(applications=apps)


#: the exit status after a second SIGINT/SIGTERM (a shell's for "killed by SIGINT")
FORCED_EXIT_CODE = 130


async def _watch_signals(signals: Any, body: trio.CancelScope, draining: trio.Event) -> None:
    """Task: the first SIGINT/SIGTERM ends ``body`` (the instance then drains); one more,
    or one during a drain already under way, stops at once (:func:`_stop_now`)."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if not draining.is_set():
            print(f"trioserve: {name}, draining", flush=True)
            draining.set()
            body.cancel()
        else:
            print(f"trioserve: {name} again, stopping now", flush=True)
            _stop_now()


def _descendants(pid: int) -> list[int]:
    """The PIDs of every process below ``pid`` (Linux ``/proc``; none found elsewhere)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:
            continue  # it exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        ppid = int(stat.rpartition(")")[2].split()[1])
        parents.setdefault(ppid, []).append(int(entry.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


def _stop_now() -> NoReturn:
    """SIGKILL every process this one started (replicas, the fork server and its forks), then
    exit without cleanup: the second Ctrl-C means *now*."""
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(FORCED_EXIT_CODE)


async def _wait_for_stop(instance: ServeInstance, draining: trio.Event) -> None:
    """Return once a shutdown is requested (signals end the caller's scope instead)."""
    await instance.shutdown_requested.wait()
    if not draining.is_set():
        print("trioserve: shutdown requested, draining", flush=True)
        draining.set()


def _control_port(args: argparse.Namespace) -> int | None:
    return None if args.control_port < 0 else int(args.control_port)


async def _serve(config: ServeConfig, args: argparse.Namespace) -> None:
    """Serve until SIGINT/SIGTERM or a shutdown request, then drain (see
    :func:`_watch_signals`).

    Tasks: the signal watcher, in a nursery around the instance (it outlives the drain, so a
    second signal can cut the drain short), and the reloader, inside the instance.
    """
    http = config.http_options
    body = trio.CancelScope()
    draining = trio.Event()
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        unwrap_lone_error(),  # an error from the instance comes out as itself
    ):
        async with trio.open_nursery() as watcher:
            watcher.start_soon(_watch_signals, signals, body, draining)
            async with open_serve(
                http_host=args.host if args.host is not None else http.host,
                http_port=args.port if args.port is not None else http.port,
                request_timeout_s=http.request_timeout_s,
                control_host=getattr(args, "control_host", "127.0.0.1"),
                control_port=_control_port(args),
                token=_token_for_start(args),
            ) as instance:
                with body:  # a first signal cancels it, during start-up too
                    await _announce(instance, config)
                    # this process is the server's own: what it built to start lives as
                    # long as it does (short full collections under load: actors._heap)
                    actors.lowlevel.freeze_long_lived()
                    async with trio.open_nursery() as nursery:
                        if getattr(args, "reload", False):
                            nursery.start_soon(_reload_loop, instance, config, args)
                        await _wait_for_stop(instance, draining)
                        nursery.cancel_scope.cancel()
            watcher.cancel_scope.cancel()
    print("trioserve: stopped", flush=True)


async def _announce(instance: ServeInstance, config: ServeConfig) -> None:
    """Deploy ``config`` and print where it answers."""
    await instance.apply(config)
    if not config.applications:
        print(f"trioserve: HTTP at {instance.http_url}", flush=True)
    for app in config.applications:
        print(
            f"trioserve: application {app.name!r} at {instance.http_url}{app.route_prefix or ''}",
            flush=True,
        )
    if instance.control_url:
        print(f"trioserve: control endpoint at {instance.control_url}", flush=True)


def _token_for_start(args: argparse.Namespace) -> str | None:
    token_file = getattr(args, "token_file", None)
    if not token_file:
        return None
    return read_or_create_token_file(token_file, secrets.token_urlsafe(32))


# -- --reload


def _watched_dirs(config: ServeConfig) -> list[Path]:
    dirs = set()
    for app in config.applications:
        module = app.import_path.rpartition(":")[0]
        if module.endswith(".py"):
            dirs.add(Path(module).resolve().parent)
        else:
            spec = importlib.util.find_spec(module.split(".")[0])
            if spec is not None and spec.origin:
                dirs.add(Path(spec.origin).resolve().parent)
    return sorted(dirs) or [Path.cwd()]


def _forget_modules_under(dirs: list[Path]) -> None:
    """Drop modules loaded from ``dirs`` so the next import reads the edited files."""
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and any(Path(file).resolve().is_relative_to(d) for d in dirs):
            del sys.modules[name]


async def _reload_loop(
    instance: ServeInstance, config: ServeConfig, args: argparse.Namespace
) -> None:
    """Redeploy every application when a ``.py`` file under its source folders changes
    (a rolling update: the old replicas serve until the new ones run); an edit that does
    not import or deploy is printed and the old version keeps serving."""
    import watchfiles

    dirs = _watched_dirs(config)
    print(f"trioserve: watching {', '.join(map(str, dirs))} for changes", flush=True)
    async for changes in watchfiles.awatch(
        *dirs, watch_filter=watchfiles.PythonFilter(), debounce=200, step=50
    ):
        names = sorted({Path(path).name for _, path in changes})
        print(f"trioserve: {', '.join(names)} changed, redeploying", flush=True)
        _forget_modules_under(dirs)
        importlib.invalidate_caches()
        try:
            for app in config.applications:
                application = load_target(app.import_path, {k: str(v) for k, v in app.args.items()})
                await instance.run(application, name=app.name, route_prefix=app.route_prefix)
        except (Exception, SystemExit) as exc:  # why: a broken edit must not stop serving
            print(f"trioserve: reload failed, previous version kept: {exc}", flush=True)
            continue
        print("trioserve: reloaded", flush=True)


# -- commands


def cmd_run(args: argparse.Namespace) -> int:
    config = _run_config(args)
    trio.run(_serve, config, args)
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    trio.run(_serve, ServeConfig(applications=[]), args)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    targets = []
    for spec, builder_args in parse_targets(args.target):
        targets.append((_module_form(spec), load_target(spec, builder_args), builder_args))
    config = build_config([(spec, app) for spec, app, _ in targets])
    apps = [
        msgspec.structs.replace(app, args=dict(builder_args))
        for app, (_, _, builder_args) in zip(config.applications, targets, strict=True)
    ]
    config = msgspec.structs.replace(config, applications=apps)
    text = dump_config(config)
    if args.output:
        Path(args.output).write_text(text)
        print(f"trioserve: wrote {args.output}", flush=True)
    else:
        sys.stdout.write(text)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_json_schema(), indent=2))
    return 0


def _request(args: argparse.Namespace, method: str, path: str, body: bytes | None = None) -> Any:
    """A control request with the instance token; its JSON answer, or CLIError."""
    address = args.address.rstrip("/")
    try:
        token = find_token(address, token_file=args.token_file)
    except TokenNotFoundError as exc:
        raise CLIError(str(exc)) from None
    request = urllib.request.Request(
        address + path,
        data=body,
        method=method,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        raise CLIError(f"{address} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CLIError(f"no trioserve instance answers at {address}: {exc}") from None


def cmd_deploy(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CLIError(f"{args.config}: {exc}") from None
    body = json.dumps(_builtins(config)).encode()
    generation = _request(args, "PUT", "/api/applications", body)["generation"]
    if args.no_wait:
        print(f"trioserve: config sent (generation {generation})")
        return 0
    return _wait_applied(args, generation, [a.name for a in config.applications])


def _builtins(config: ServeConfig) -> Any:
    return msgspec.to_builtins(config)


def _wait_applied(args: argparse.Namespace, generation: int, names: list[str]) -> int:
    import time

    deadline = time.monotonic() + args.wait_timeout
    while time.monotonic() < deadline:
        status = _request(args, "GET", "/api/status")
        apply = status.get("apply", {})
        if apply.get("generation", 0) > generation:
            print("trioserve: a newer config was applied meanwhile")
            return 0
        if apply.get("generation") == generation and apply.get("state") != "RUNNING":
            if apply.get("state") == "FAILED":
                raise CLIError(f"deploy failed: {apply.get('error')}")
            print(f"trioserve: deployed {', '.join(names) or 'no applications'}")
            return 0
        time.sleep(0.2)
    raise CLIError(f"the config was not applied within {args.wait_timeout} s")


def cmd_delete(args: argparse.Namespace) -> int:
    _request(args, "DELETE", f"/api/applications/{args.name}")
    print(f"trioserve: deleted {args.name}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from ._schema import load_config as parse

    config = parse(_request(args, "GET", "/api/applications"))
    sys.stdout.write(dump_config(config))
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    _request(args, "POST", "/api/shutdown")
    print(f"trioserve: {args.address} is shutting down")
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


def _status_of(args: argparse.Namespace) -> dict[str, Any]:
    """The status from the control endpoint (with the token), or from an HTTP port's
    public ``/-/status`` when no token is known for the address."""
    address = args.address.rstrip("/")
    try:
        find_token(address, token_file=args.token_file)
    except TokenNotFoundError:
        try:
            with urllib.request.urlopen(address + "/-/status", timeout=args.timeout) as response:
                result: dict[str, Any] = json.loads(response.read())
                return result
        except (urllib.error.URLError, OSError) as exc:
            raise CLIError(f"no trioserve instance answers at {address}: {exc}") from None
    answer: dict[str, Any] = _request(args, "GET", "/api/status")
    return answer


def cmd_status(args: argparse.Namespace) -> int:
    status = _status_of(args)
    if args.output == "yaml":
        import yaml

        status.pop("apply", None)
        sys.stdout.write(yaml.safe_dump(status, sort_keys=False))
    else:
        print(format_status(status))
    return 0


def _version() -> str:
    try:
        return version("trioserve")
    except PackageNotFoundError:
        return "unknown"


def _add_serve_options(parser: argparse.ArgumentParser, control_default: int) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="HTTP host to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="HTTP port (default: %(default)s; 0 picks one)"
    )
    parser.add_argument(
        "--control-port",
        type=int,
        default=control_default,
        help="control endpoint port (default: %(default)s; -1 for none, 0 picks one)",
    )
    parser.add_argument(
        "--token-file",
        help="read the instance token from this file, or create it (mode 0600) with a new one",
    )


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=DEFAULT_CONTROL,
        help="the instance's control endpoint (default: %(default)s)",
    )
    parser.add_argument(
        "--token-file",
        help="file holding the instance token (else TRIOSERVE_TOKEN, else the runtime file)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per request (default: %(default)s)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trioserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trioserve {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve applications until Ctrl-C or SIGTERM")
    run.add_argument(
        "target",
        nargs="+",
        help="MODULE:APP, FILE.py:APP, MODULE:BUILDER key=value ..., or a config file",
    )
    _add_serve_options(run, 8265)
    run.add_argument("--name", default="default", help="application name (default: %(default)s)")
    run.add_argument("--route-prefix", default="/", help="route prefix (default: %(default)s)")
    run.add_argument("--reload", action="store_true", help="redeploy when source files change")
    run.set_defaults(func=cmd_run)

    start = sub.add_parser("start", help="run an instance with no applications, for deploy")
    _add_serve_options(start, 8265)
    start.add_argument(
        "--control-host", default="127.0.0.1", help="control host (default: %(default)s)"
    )
    start.set_defaults(func=cmd_start)

    build = sub.add_parser("build", help="write a config file for applications")
    build.add_argument("target", nargs="+", help="MODULE:APP [key=value ...] ...")
    build.add_argument("-o", "--output", help="file to write (default: standard output)")
    build.set_defaults(func=cmd_build)

    deploy = sub.add_parser("deploy", help="apply a config file to a running instance")
    deploy.add_argument("config", help="the config file (YAML or JSON)")
    _add_client_options(deploy)
    deploy.add_argument("--no-wait", action="store_true", help="return once the config is sent")
    deploy.add_argument(
        "--wait-timeout", type=float, default=300.0, help="seconds to wait (default: %(default)s)"
    )
    deploy.set_defaults(func=cmd_deploy)

    status = sub.add_parser("status", help="show a running instance's applications")
    _add_client_options(status)
    status.add_argument(
        "-o",
        "--output",
        choices=["table", "yaml"],
        default="table",
        help="format (default: %(default)s)",
    )
    status.set_defaults(func=cmd_status)

    config = sub.add_parser("config", help="print the config in force")
    _add_client_options(config)
    config.set_defaults(func=cmd_config)

    delete = sub.add_parser("delete", help="delete one application")
    delete.add_argument("name", help="the application's name")
    _add_client_options(delete)
    delete.set_defaults(func=cmd_delete)

    shutdown = sub.add_parser("shutdown", help="drain and stop a running instance")
    _add_client_options(shutdown)
    shutdown.set_defaults(func=cmd_shutdown)

    schema = sub.add_parser("schema", help="print the JSON Schema of config files")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CLIError, ServeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before serving started (a slow import, say)
        print("trioserve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""The config file: Ray-Serve-style YAML/JSON schema, loading, validation, dumping, building.

Pure code apart from reading the one file ``load_config`` is given and importing the
``import_path`` modules ``build_app`` resolves. Every problem with a config is a
:class:`ConfigError` naming the field's path, e.g.
``applications[1].deployments[0].num_replicas: must be an int >= 0 or 'auto', got -1``.
Deployment options are checked by the same code as ``@serve.deployment(...)`` (``_config``).
"""

from __future__ import annotations

import datetime
import importlib
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import msgspec
import yaml
from msgspec import UNSET, UnsetType

from ._config import OPTION_NAMES, AutoscalingConfig, DeploymentConfig, apply_options
from ._deployment import Application, Deployment, _check_name
from .exceptions import ConfigError

Format = Literal["yaml", "json"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# Each struct repeats forbid_unknown_fields/kw_only/frozen: mypy's dataclass_transform does not
# see them inherited from a base struct.


class HTTPOptionsSchema(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Where the HTTP proxy listens."""

    host: str = "127.0.0.1"
    port: int = 8000
    request_timeout_s: float | None = None


class LoggingConfigSchema(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Log level of the serve process and whether each HTTP request is logged."""

    log_level: str = "INFO"
    access_log: bool = False


class RuntimeEnvSchema(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Environment of the application's replicas."""

    env_vars: dict[str, str] = {}


class DeploymentSchema(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Overrides for one deployment of an application: only the options given are set.

    The options are those of ``@serve.deployment(...)``; their values are checked by the
    same code (``_config``). ``ray_actor_options`` is Ray's spelling of resources/env_vars.
    """

    name: str
    # why int | str: "auto" or a count; the value is checked by _config, with its message
    num_replicas: int | str | UnsetType = UNSET
    max_ongoing_requests: int | UnsetType = UNSET
    max_queued_requests: int | UnsetType = UNSET
    autoscaling_config: dict[str, Any] | UnsetType | None = UNSET
    user_config: Any | UnsetType = UNSET  # why Any: whatever the deployment's reconfigure takes
    health_check_period_s: float | UnsetType = UNSET
    health_check_timeout_s: float | UnsetType = UNSET
    graceful_shutdown_timeout_s: float | UnsetType = UNSET
    placement: str | UnsetType = UNSET  # why str: checked by _config, with its message
    ray_actor_options: dict[str, Any] | UnsetType = UNSET
    resources: dict[str, Any] | UnsetType = UNSET  # why Any: Ray nests {"resources": {...}}
    env_vars: dict[str, str] | UnsetType = UNSET
    event_loop: str | UnsetType = UNSET  # why str: checked by _config, with its message
    max_message_size: int | UnsetType = UNSET

    def options(self) -> dict[str, Any]:
        """The options given that trioserve applies, as ``Deployment.options(**...)`` takes."""
        return {k: getattr(self, k) for k in APPLIED_OPTIONS if getattr(self, k) is not UNSET}


APPLIED_OPTIONS = tuple(
    f for f in DeploymentSchema.__struct_fields__ if f in OPTION_NAMES and f != "name"
)


class ApplicationSchema(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One application: what to import, where it is served and its deployment overrides."""

    name: str = "default"
    route_prefix: str | None = "/"
    import_path: str
    runtime_env: RuntimeEnvSchema = msgspec.field(default_factory=RuntimeEnvSchema)
    args: dict[str, Any] = {}
    deployments: list[DeploymentSchema] = []


class ServeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A whole config file: HTTP and logging options and the applications to run."""

    http_options: HTTPOptionsSchema = msgspec.field(default_factory=HTTPOptionsSchema)
    logging_config: LoggingConfigSchema = msgspec.field(default_factory=LoggingConfigSchema)
    applications: list[ApplicationSchema]


# ---------------------------------------------------------------------------- loading


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | bytes, *, fmt: Format | None = None
) -> ServeConfig:
    """Read, convert and validate a config; every problem raises :class:`ConfigError`.

    ``source`` is a path (an ``os.PathLike``, or a one-line ``str`` ending in ``.yaml``,
    ``.yml`` or ``.json`` or naming an existing file), the text itself (``str``/``bytes``), or
    the already parsed dict. ``fmt`` defaults to the file's extension, else JSON when the text
    starts with ``{``, else YAML.
    """
    data = dict(source) if isinstance(source, Mapping) else _parse(source, fmt)
    if not isinstance(data, Mapping):
        raise ConfigError(
            "", f"the config must be a mapping with an 'applications' list, got {_kind(data)}"
        )
    try:
        config = msgspec.convert(data, ServeConfig)
    except msgspec.ValidationError as exc:
        path, reason = _translate(str(exc), data)
        raise ConfigError(path, reason) from exc
    validate_config(config)
    return config


def _parse(source: str | os.PathLike[str] | bytes, fmt: Format | None) -> Any:
    where = ""
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _looks_like_path(source)):
        where = os.fspath(source)
        try:
            text = Path(where).read_bytes()
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {where!r}: {exc.strerror}") from exc
        suffix = Path(where).suffix.lower()
        fmt = fmt or (
            "json" if suffix == ".json" else "yaml" if suffix in (".yaml", ".yml") else None
        )
    elif isinstance(source, str):
        text = source.encode()
    elif isinstance(source, bytes):
        text = source
    else:
        raise TypeError(f"load_config needs a path, text, bytes or a dict, got {source!r}")
    fmt = fmt or ("json" if text.lstrip()[:1] == b"{" else "yaml")
    label = f"{where}: " if where else ""
    if fmt == "json":
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            raise ConfigError("", f"{label}invalid JSON: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{label}invalid YAML: {exc}") from exc


def _looks_like_path(text: str) -> bool:
    if "\n" in text:
        return False
    return text.lower().endswith((".yaml", ".yml", ".json")) or os.path.isfile(text)


def _kind(value: object) -> str:
    """The config-file name of a value's type (msgspec's names, as users see them)."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


_TYPE_WORDS = {"object": "mapping", "array": "list"}
_SEGMENT = re.compile(r"\.(\w+)|\[(\d+)\]|\[\.\.\.\]")


def _translate(message: str, data: Any) -> tuple[str, str]:
    """msgspec's ``"Expected `int`, got `str` - at `$.a[0].b`"`` as ``("a[0].b", reason)``."""
    text, _, at = message.partition(" - at `")
    is_key = at.startswith("key` in `")
    raw = at.removeprefix("key` in `").rstrip("`").removeprefix("$")
    if m := re.fullmatch(r"Object contains unknown field `(.*)`", text):
        return _join(_name_path(raw, data, None), m[1]), "unknown field"
    if m := re.fullmatch(r"Object missing required field `(.*)`", text):
        return _join(_name_path(raw, data, None), m[1]), "required field missing"
    if m := re.fullmatch(r"Expected `(.*)`, got `(.*)`", text):
        want, got = (re.sub(r"\w+", lambda w: _TYPE_WORDS.get(w[0], w[0]), t) for t in m.groups())
        path = _name_path(raw, data, None if is_key else got)
        return path, f"{'keys: ' if is_key else ''}expected {want}, got {got}"
    plain = text.replace("`", "")
    return _name_path(raw, data, None), plain[:1].lower() + plain[1:]


def _name_path(raw: str, data: Any, got: str | None) -> str:
    """msgspec's ``.a[0].env[...]`` as ``a[0].env.KEY``, naming the bad dict value's key.

    msgspec says ``[...]`` for "a value of this dict"; when that value is the bad one (the
    last segment) and its type is known (``got``), the first key with such a value is it.
    """
    out: list[str] = []
    node = data
    segments = list(_SEGMENT.finditer(raw))
    for i, seg in enumerate(segments):
        if seg[1] is not None:
            out.append(f".{seg[1]}")
            node = node.get(seg[1]) if isinstance(node, Mapping) else None
        elif seg[2] is not None:
            out.append(f"[{seg[2]}]")
            index = int(seg[2])
            node = node[index] if isinstance(node, list) and index < len(node) else None
        else:
            last = i == len(segments) - 1
            keys = list(node) if isinstance(node, Mapping) and last and got else []
            key = next((k for k in keys if _kind(node[k]) == got), None)
            if key is None:
                out.append(seg[0])
            elif isinstance(key, str) and key.isidentifier():
                out.append(f".{key}")
            else:
                out.append(f"[{key!r}]")
    return "".join(out).removeprefix(".")


def _join(path: str, name: str) -> str:
    if not path:
        return name
    return f"{path}{name}" if name.startswith("[") else f"{path}.{name}"


# ------------------------------------------------------------------------- validation


def validate_config(config: ServeConfig) -> None:
    """The checks types cannot express: ranges, route prefixes, unique names, options."""
    _check_http(config.http_options)
    level = config.logging_config.log_level
    if level.upper() not in LOG_LEVELS:
        raise ConfigError(
            "logging_config.log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}"
        )
    names: dict[str, int] = {}
    prefixes: dict[str, int] = {}
    for i, app in enumerate(config.applications):
        at = f"applications[{i}]"
        _check_application(app, at)
        if app.name in names:
            raise ConfigError(
                f"{at}.name",
                f"duplicate application name {app.name!r} (also applications[{names[app.name]}])",
            )
        names[app.name] = i
        if app.route_prefix is not None:
            if app.route_prefix in prefixes:
                raise ConfigError(
                    f"{at}.route_prefix",
                    f"duplicate route prefix {app.route_prefix!r} "
                    f"(also applications[{prefixes[app.route_prefix]}])",
                )
            prefixes[app.route_prefix] = i


def _check_http(http: HTTPOptionsSchema) -> None:
    if not http.host:
        raise ConfigError("http_options.host", f"must be a non-empty host name, got {http.host!r}")
    if not 0 <= http.port <= 65535:
        raise ConfigError("http_options.port", f"must be between 0 and 65535, got {http.port!r}")
    timeout = http.request_timeout_s
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(
            "http_options.request_timeout_s", f"must be a number > 0 or null, got {timeout!r}"
        )


def _check_application(app: ApplicationSchema, at: str) -> None:
    if not app.name:
        raise ConfigError(f"{at}.name", f"must be a non-empty str, got {app.name!r}")
    if app.route_prefix is not None:
        reason = _route_prefix_problem(app.route_prefix)
        if reason:
            raise ConfigError(f"{at}.route_prefix", f"{reason}, got {app.route_prefix!r}")
    try:
        _split_import_path(app.import_path)
    except ValueError as exc:
        raise ConfigError(f"{at}.import_path", str(exc)) from None
    seen: dict[str, int] = {}
    for j, dep in enumerate(app.deployments):
        where = f"{at}.deployments[{j}]"
        _check_deployment(dep, where)
        if dep.name in seen:
            raise ConfigError(
                f"{where}.name",
                f"duplicate deployment {dep.name!r} (also {at}.deployments[{seen[dep.name]}])",
            )
        seen[dep.name] = j


def _route_prefix_problem(prefix: str) -> str | None:
    if not prefix.startswith("/"):
        return "must start with '/'"
    if prefix != "/" and prefix.endswith("/"):
        return "must not end with '/' (unless it is '/')"
    if "{" in prefix or "}" in prefix:
        return "must not contain '{' or '}'"
    return None


def _split_import_path(path: str) -> tuple[str, str]:
    """``"pkg.mod:attr.sub"`` or ``"pkg.mod.attr"`` as ``(module, attr)``."""
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    parts = [*module.split("."), *attr.split(".")]
    if not module or not attr or not all(p.isidentifier() for p in parts):
        raise ValueError(f"must be 'module:attribute' or 'module.attribute', got {path!r}")
    return module, attr


def _check_deployment(dep: DeploymentSchema, at: str) -> None:
    try:
        _check_name(dep.name)
    except ValueError as exc:
        reason = str(exc).removeprefix("deployment name ")
        raise ConfigError(f"{at}.name", reason) from None
    options = dep.options()
    for key, value in options.items():
        if key == "autoscaling_config" and value is not None:
            _check_autoscaling(value, f"{at}.{key}")
        try:
            apply_options(DeploymentConfig(), {key: value})
        except (ValueError, TypeError) as exc:
            path, reason = _locate(at, [key], str(exc)) or (f"{at}.{key}", str(exc))
            raise ConfigError(path, reason) from exc
    try:
        apply_options(DeploymentConfig(), options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(at, str(exc)) from exc


def _check_autoscaling(value: Mapping[str, Any], at: str) -> None:
    known = [a.name for a in attrs.fields(AutoscalingConfig)]
    for key in value:
        if key not in known:
            raise ConfigError(f"{at}.{key}", f"unknown field; known: {', '.join(known)}")
    try:
        AutoscalingConfig.from_value(value)
    except (ValueError, TypeError) as exc:
        path, reason = _locate(at, known, str(exc)) or (at, str(exc))
        raise ConfigError(path, reason) from exc


def _locate(at: str, keys: Iterable[str], message: str) -> tuple[str, str] | None:
    """A ``_config`` message moved into the path, if it names one of ``keys``.

    ``"num_replicas must be ..."`` is ``(at.num_replicas, "must be ...")`` and
    ``"resources: num_cpus must be ..."`` is ``(at.resources.num_cpus, "must be ...")``.
    """
    for key in keys:
        if message.startswith(f"{key} must "):
            return f"{at}.{key}", message[len(key) + 1 :]
        if message.startswith(f"{key}: "):
            rest = message[len(key) + 2 :]
            if m := re.match(r"(\w+) must ", rest):
                return f"{at}.{key}.{m[1]}", rest[len(m[1]) + 1 :]
            return f"{at}.{key}", rest
    return None


# ------------------------------------------------------------------- schema and dumping


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file (for editors and ``trioserve`` tooling)."""
    return msgspec.json.schema(ServeConfig)


def dump_config(config: ServeConfig) -> str:
    """The config as YAML that :func:`load_config` reads back equal; unset options omitted."""
    try:
        data = msgspec.to_builtins(config, builtin_types=(bytes, datetime.datetime, datetime.date))
    except TypeError as exc:
        raise ConfigError("", f"the config cannot be written as YAML: {exc}") from exc
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def build_config(
    targets: Sequence[tuple[str, Application]],
    *,
    http_options: HTTPOptionsSchema | None = None,
    logging_config: LoggingConfigSchema | None = None,
) -> ServeConfig:
    """A config for ``(import_path, application)`` pairs, listing every deployment.

    One target is the app ``"default"``; several are named after their attribute. The first
    is served at ``/``, the others at ``/<name>``. Each deployment lists ``num_replicas``,
    ``max_ongoing_requests`` and the options that differ from the defaults.
    """
    apps = []
    for i, (import_path, app) in enumerate(targets):
        try:
            attr = _split_import_path(import_path)[1]
        except ValueError as exc:
            raise ConfigError(f"applications[{i}].import_path", str(exc)) from None
        name = "default" if len(targets) == 1 else attr.rpartition(".")[2]
        try:
            nodes = app.walk()
        except ValueError as exc:
            raise ConfigError(f"applications[{i}]", str(exc)) from exc
        apps.append(
            ApplicationSchema(
                name=name,
                route_prefix="/" if i == 0 else f"/{name}",
                import_path=import_path,
                deployments=[deployment_schema(n.deployment) for n in reversed(nodes)],
            )
        )
    config = ServeConfig(
        http_options=http_options or HTTPOptionsSchema(),
        logging_config=logging_config or LoggingConfigSchema(),
        applications=apps,
    )
    validate_config(config)
    return config


def deployment_schema(dep: Deployment) -> DeploymentSchema:
    """``dep``'s options as overrides that reproduce them (non-default ones, and the counts)."""
    config, default = dep.config, DeploymentConfig()
    given: dict[str, Any] = {"max_ongoing_requests": config.max_ongoing_requests}
    auto = config.autoscaling_config
    if auto is not None:
        base = AutoscalingConfig()
        given["num_replicas"] = "auto"
        given["autoscaling_config"] = {
            k: v for k, v in attrs.asdict(auto).items() if v != getattr(base, k)
        }
    else:
        given["num_replicas"] = config.num_replicas
    if config.user_config is not None:
        given["user_config"] = config.user_config
    for key in (
        "max_queued_requests",
        "health_check_period_s",
        "health_check_timeout_s",
        "graceful_shutdown_timeout_s",
        "placement",
    ):
        if getattr(config, key) != getattr(default, key):
            given[key] = getattr(config, key)
    if config.resources != default.resources:
        res = config.resources
        amounts = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "memory": res.memory}
        given["resources"] = {k: v for k, v in amounts.items() if v}
        if res.custom:
            given["resources"]["resources"] = dict(res.custom)
    if config.env_vars:
        given["env_vars"] = dict(config.env_vars)
    return DeploymentSchema(name=dep.name, **given)


# ---------------------------------------------------------------------------- building


def resolve_import_path(path: str) -> object:
    """The object ``"module:attr"`` (or ``"module.attr"``) names, importing the module."""
    return _resolve(path, "import_path")


def _resolve(path: str, at: str) -> object:
    try:
        module_name, attr = _split_import_path(path)
    except ValueError as exc:
        raise ConfigError(at, str(exc)) from None
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise ConfigError(
                at, f"no module named {missing!r} (from {path!r}); is it on sys.path?"
            ) from exc
        raise ConfigError(at, f"importing {module_name!r} (from {path!r}) failed: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(
                at, f"module {module_name!r} has no attribute {attr!r} (from {path!r})"
            ) from exc
    return obj


def build_app(app: ApplicationSchema, *, at: str = "") -> Application:
    """The Application ``app`` describes, with its deployment overrides applied.

    ``import_path`` names an Application, a Deployment (bound with no arguments, as the CLI
    does) or a builder called as ``builder(args)`` that returns an Application.
    ``runtime_env.env_vars`` reach every deployment (a deployment's own ``env_vars`` win, key
    by key). ``at`` prefixes the paths in errors (``"applications[0]"``).
    """
    where = _join(at, "import_path")
    target = _resolve(app.import_path, where)
    if isinstance(target, (Application, Deployment)):
        if app.args:
            kind = "an Application" if isinstance(target, Application) else "a Deployment"
            raise ConfigError(
                _join(at, "args"),
                f"{app.import_path!r} is {kind}, which takes no args; "
                "point import_path at a builder function to pass args",
            )
        graph = target if isinstance(target, Application) else target.bind()
    elif callable(target):
        graph = target(dict(app.args))
        if not isinstance(graph, Application):
            raise ConfigError(
                where,
                f"builder {app.import_path!r} returned {graph!r}, not an Application "
                "(return deployment.bind(...))",
            )
    else:
        raise ConfigError(
            where, f"{app.import_path!r} is {target!r}, not an Application or a builder"
        )
    graph = apply_overrides(graph, app.deployments, at=at)
    return _with_env_vars(graph, app.runtime_env.env_vars, at=_join(at, "runtime_env.env_vars"))


def apply_overrides(
    app: Application, overrides: Sequence[DeploymentSchema], *, at: str = ""
) -> Application:
    """A copy of the graph with each override applied (``Deployment.options`` semantics)."""
    if not overrides:
        return app
    try:
        nodes = app.walk()
    except ValueError as exc:
        raise ConfigError(at, str(exc)) from exc
    by_name = {n.deployment.name: n.deployment for n in nodes}
    replaced: dict[int, Deployment] = {}
    for j, override in enumerate(overrides):
        where = _join(at, f"deployments[{j}]")
        original = by_name.get(override.name)
        if original is None:
            raise ConfigError(
                f"{where}.name",
                f"no deployment named {override.name!r} in this application; "
                f"it has {', '.join(sorted(by_name))}",
            )
        current = replaced.get(id(original), original)
        options = override.options()
        try:
            replaced[id(original)] = current.options(**options)
        except (ValueError, TypeError) as exc:
            path, reason = _locate(where, options, str(exc)) or (where, str(exc))
            raise ConfigError(path, reason) from exc
    return _rebuild(app, replaced)


def _with_env_vars(app: Application, env_vars: Mapping[str, str], *, at: str) -> Application:
    """Every deployment with the application's env vars (its own win, key by key)."""
    if not env_vars:
        return app
    replaced: dict[int, Deployment] = {}
    for node in app.walk():
        dep = node.deployment
        try:
            replaced[id(dep)] = dep.options(env_vars={**env_vars, **dep.config.env_vars})
        except (ValueError, TypeError) as exc:
            raise ConfigError(at, str(exc)) from exc
    return _rebuild(app, replaced)


def _rebuild(app: Application, replaced: Mapping[int, Deployment]) -> Application:
    """``app`` with deployments swapped; shared nodes and containers stay shared."""
    memo: dict[int, Any] = {}  # why id(): originals stay alive (the graph holds them)

    def rebuild(value: Any) -> Any:
        if not isinstance(value, (Application, list, tuple, dict)):
            return value
        if id(value) in memo:
            return memo[id(value)]
        new: Any
        if isinstance(value, Application):
            dep = replaced.get(id(value.deployment), value.deployment)
            args, kwargs = rebuild(value.args), rebuild(value.kwargs)
            same = dep is value.deployment and args is value.args and kwargs is value.kwargs
            new = value if same else Application(dep, args, kwargs)
        elif isinstance(value, dict):
            items = {k: rebuild(v) for k, v in value.items()}
            same = all(items[k] is v for k, v in value.items())
            new = value if same else items
        else:
            parts = [rebuild(v) for v in value]
            same = all(a is b for a, b in zip(parts, value, strict=True))
            new = value if same else (parts if isinstance(value, list) else tuple(parts))
        memo[id(value)] = new
        return new

    result = rebuild(app)
    assert isinstance(result, Application)
    return result

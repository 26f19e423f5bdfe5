"""The config file (``_schema``): loading, error paths, JSON Schema, dump/load, building apps."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from trioserve._config import OPTION_NAMES
from trioserve._schema import (
    ApplicationSchema,
    DeploymentSchema,
    HTTPOptionsSchema,
    apply_overrides,
    build_app,
    build_config,
    config_json_schema,
    dump_config,
    load_config,
    resolve_import_path,
)
from trioserve.exceptions import ConfigError, ServeError

from . import schema_targets

TARGETS = "tests.trioserve.schema_targets"

YAML_CONFIG = f"""\
http_options:
  host: 0.0.0.0
  port: 8080
  request_timeout_s: 30
logging_config:
  log_level: DEBUG
  access_log: true
applications:
  - name: adder
    route_prefix: /add
    import_path: {TARGETS}:build
    args:
      amount: 3
    runtime_env:
      env_vars:
        MODE: fast
    deployments:
      - name: Ingress
        num_replicas: 4
        user_config: {{threshold: 0.5}}
      - name: Adder
        num_replicas: auto
        autoscaling_config:
          min_replicas: 1
          max_replicas: 5
  - name: plain
    route_prefix: null
    import_path: {TARGETS}.app
"""


def _app(**fields: Any) -> dict[str, Any]:
    return {"import_path": f"{TARGETS}:app", **fields}


def _error(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return str(info.value)


def test_load_config_reads_yaml_file(tmp_path: Path) -> None:
    """A Ray-Serve-style YAML file loads into typed structs with its values."""
    path = tmp_path / "serve.yaml"
    path.write_text(YAML_CONFIG)
    config = load_config(path)
    assert config.http_options == HTTPOptionsSchema(
        host="0.0.0.0", port=8080, request_timeout_s=30.0
    )
    assert config.logging_config.log_level == "DEBUG"
    assert config.logging_config.access_log is True
    first, second = config.applications
    assert first.name == "adder"
    assert first.route_prefix == "/add"
    assert first.args == {"amount": 3}
    assert first.runtime_env.env_vars == {"MODE": "fast"}
    assert first.deployments[0] == DeploymentSchema(
        name="Ingress", num_replicas=4, user_config={"threshold": 0.5}
    )
    assert first.deployments[1].autoscaling_config == {"min_replicas": 1, "max_replicas": 5}
    assert second.route_prefix is None
    assert second.import_path == f"{TARGETS}.app"
    assert load_config(str(path)) == config


def test_load_config_reads_json_file_text_and_dict(tmp_path: Path) -> None:
    """JSON files, JSON or YAML text (str or bytes) and plain dicts all load the same."""
    data = {"applications": [_app(name="a", deployments=[{"name": "Adder", "num_replicas": 2}])]}
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(data))
    expected = load_config(data)
    assert load_config(path) == expected
    assert load_config(json.dumps(data)) == expected
    assert load_config(json.dumps(data).encode(), fmt="json") == expected
    yaml_text = f"applications:\n- name: a\n  import_path: {TARGETS}:app\n"
    yaml_text += "  deployments: [{name: Adder, num_replicas: 2}]\n"
    assert load_config(yaml_text) == expected


def test_load_config_fills_defaults_and_leaves_options_unset() -> None:
    """Omitted sections get defaults; a deployment's options are set only when given."""
    config = load_config({"applications": [_app(deployments=[{"name": "Adder"}])]})
    assert config.http_options == HTTPOptionsSchema(host="127.0.0.1", port=8000)
    assert config.logging_config.log_level == "INFO"
    assert config.logging_config.access_log is False
    app = config.applications[0]
    assert (app.name, app.route_prefix, app.args) == ("default", "/", {})
    dep = app.deployments[0]
    assert dep.num_replicas is msgspec.UNSET
    assert dep.user_config is msgspec.UNSET
    assert dep.options() == {}


def test_deployment_schema_covers_every_deployment_option() -> None:
    """Every ``@serve.deployment`` option, and only those, can be overridden from a file."""
    assert set(DeploymentSchema.__struct_fields__) == OPTION_NAMES
    given: dict[str, Any] = {name: 1 for name in OPTION_NAMES - {"name"}}
    assert set(DeploymentSchema(name="x", **given).options()) == OPTION_NAMES - {"name"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"applications": [_app(foo=1)]}, "applications[0].foo: unknown field"),
        (
            {"applications": [_app(deployments=[{"name": "A", "bogus": 1}])]},
            "applications[0].deployments[0].bogus: unknown field",
        ),
        ({"applications": [], "proxy": 1}, "proxy: unknown field"),
        (
            {"http_options": {"port": "80"}, "applications": []},
            "http_options.port: expected int, got str",
        ),
        (
            {"applications": [_app(deployments=[{"name": "A", "max_ongoing_requests": "8"}])]},
            "applications[0].deployments[0].max_ongoing_requests: expected int, got str",
        ),
        (
            {"applications": [_app(runtime_env={"env_vars": {"OK": "1", "N": 2}})]},
            "applications[0].runtime_env.env_vars.N: expected str, got int",
        ),
        ({"applications": [_app(args={1: "x"})]}, "applications[0].args: keys: expected str"),
        ({"applications": {}}, "applications: expected list, got mapping"),
        ({"applications": [{"name": "a"}]}, "applications[0].import_path: required field missing"),
        ({}, "applications: required field missing"),
        ("- 1\n", "the config must be a mapping with an 'applications' list, got list"),
    ],
)
def test_load_config_type_errors_name_the_field(data: Any, message: str) -> None:
    """Unknown fields and wrong types say exactly which field, however deeply nested."""
    assert _error(data).startswith(message)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {
                "applications": [
                    _app(name="a", route_prefix="/a"),
                    _app(
                        name="b", route_prefix="/b", deployments=[{"name": "A", "num_replicas": -1}]
                    ),
                ]
            },
            "applications[1].deployments[0].num_replicas: must be an int >= 0 or 'auto', got -1",
        ),
        (
            {"applications": [_app(deployments=[{"name": "A", "placement": "moon"}])]},
            "applications[0].deployments[0].placement: must be 'process' or 'inline', got 'moon'",
        ),
        (
            {"applications": [_app(deployments=[{"name": "A", "health_check_period_s": 0}])]},
            "applications[0].deployments[0].health_check_period_s: must be a number > 0, got 0",
        ),
        (
            {
                "applications": [
                    _app(deployments=[{"name": "A", "autoscaling_config": {"max_replicas": 0}}])
                ]
            },
            "applications[0].deployments[0].autoscaling_config.max_replicas: "
            "must be an int >= 1, got 0",
        ),
        (
            {"applications": [_app(deployments=[{"name": "A", "autoscaling_config": {"x": 1}}])]},
            "applications[0].deployments[0].autoscaling_config.x: unknown field",
        ),
        (
            {
                "applications": [
                    _app(
                        deployments=[
                            {
                                "name": "A",
                                "num_replicas": 2,
                                "autoscaling_config": {"max_replicas": 3},
                            }
                        ]
                    )
                ]
            },
            "applications[0].deployments[0]: num_replicas=2 and autoscaling_config exclude",
        ),
        (
            {"applications": [_app(deployments=[{"name": "A", "resources": {"num_cpus": -1}}])]},
            "applications[0].deployments[0].resources.num_cpus: must be a number >= 0, got -1",
        ),
        (
            {"applications": [_app(deployments=[{"name": "A", "ray_actor_options": {"x": 1}}])]},
            "applications[0].deployments[0].ray_actor_options: unknown ray_actor_options key(s)",
        ),
        (
            {"applications": [_app(deployments=[{"name": "A"}, {"name": "A"}])]},
            "applications[0].deployments[1].name: duplicate deployment 'A' "
            "(also applications[0].deployments[0])",
        ),
        (
            {"applications": [_app(deployments=[{"name": "a/b"}])]},
            "applications[0].deployments[0].name: must be a non-empty str without '/' or '#'",
        ),
        (
            {"applications": [_app(route_prefix="api")]},
            "applications[0].route_prefix: must start with '/', got 'api'",
        ),
        (
            {"applications": [_app(route_prefix="/api/")]},
            "applications[0].route_prefix: must not end with '/' (unless it is '/'), got '/api/'",
        ),
        (
            {"applications": [_app(route_prefix="/items/{id}")]},
            "applications[0].route_prefix: must not contain '{' or '}', got '/items/{id}'",
        ),
        (
            {
                "applications": [
                    _app(name="x", route_prefix="/a"),
                    _app(name="x", route_prefix="/b"),
                ]
            },
            "applications[1].name: duplicate application name 'x' (also applications[0])",
        ),
        (
            {"applications": [_app(name="a"), _app(name="b")]},
            "applications[1].route_prefix: duplicate route prefix '/' (also applications[0])",
        ),
        (
            {"applications": [_app(name="")]},
            "applications[0].name: must be a non-empty str, got ''",
        ),
        (
            {"applications": [{"import_path": "nomodule"}]},
            "applications[0].import_path: must be 'module:attribute' or 'module.attribute', "
            "got 'nomodule'",
        ),
        (
            {"applications": [{"import_path": "mod:"}]},
            "applications[0].import_path: must be 'module:attribute'",
        ),
        (
            {"http_options": {"port": 70000}, "applications": []},
            "http_options.port: must be between 0 and 65535, got 70000",
        ),
        (
            {"http_options": {"request_timeout_s": -1}, "applications": []},
            "http_options.request_timeout_s: must be a number > 0 or null, got -1.0",
        ),
        (
            {"logging_config": {"log_level": "LOUD"}, "applications": []},
            "logging_config.log_level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, "
            "got 'LOUD'",
        ),
    ],
)
def test_load_config_value_errors_name_the_field(data: Any, message: str) -> None:
    """Bad values, route prefixes and duplicate names are reported at their path."""
    assert _error(data).startswith(message)


def test_config_error_is_a_value_error_with_the_path() -> None:
    """ConfigError is a ValueError and a ServeError, carrying ``path`` and ``reason``."""
    with pytest.raises(ConfigError) as info:
        load_config({"http_options": {"port": -1}, "applications": []})
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ServeError)
    assert info.value.path == "http_options.port"
    assert info.value.reason == "must be between 0 and 65535, got -1"


def test_load_config_unreadable_or_malformed_input_is_a_config_error(tmp_path: Path) -> None:
    """A missing file, broken YAML and broken JSON are ConfigErrors too."""
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config("applications: [\n")
    bad = tmp_path / "bad.json"
    bad.write_text('{"applications": [')
    with pytest.raises(ConfigError, match=re.escape(f"{bad}: invalid JSON")):
        load_config(bad)
    with pytest.raises(ConfigError, match="got null"):
        load_config("")


def test_config_json_schema_describes_the_structs() -> None:
    """The JSON Schema is a dict with ``$defs`` for each section, unknown fields refused."""
    schema = config_json_schema()
    assert isinstance(schema, dict)
    defs = schema["$defs"]
    assert {"ServeConfig", "ApplicationSchema", "DeploymentSchema"} <= set(defs)
    assert defs["ApplicationSchema"]["required"] == ["import_path"]
    assert defs["DeploymentSchema"]["additionalProperties"] is False
    json.dumps(schema)


def test_dump_config_round_trips_through_load_config() -> None:
    """Dumped YAML loads back equal, and unset deployment options are not written."""
    config = load_config(YAML_CONFIG)
    text = dump_config(config)
    assert load_config(text) == config
    assert "max_queued_requests" not in text
    assert text.startswith("http_options:\n")


def test_build_config_lists_every_deployment_with_its_options() -> None:
    """Every deployment of the graph is listed, ingress first, with counts and changed options."""
    leaf = schema_targets.Adder.options(name="Leaf", placement="inline", user_config={"k": 1})
    scaled = schema_targets.Adder.options(
        name="Scaled", autoscaling_config={"min_replicas": 0, "max_replicas": 4}
    )
    graph = schema_targets.Ingress.bind([leaf.bind(1), {"s": scaled.bind(2)}])
    config = build_config([(f"{TARGETS}:app", graph)])
    (app,) = config.applications
    assert (app.name, app.route_prefix, app.import_path) == ("default", "/", f"{TARGETS}:app")
    assert [d.name for d in app.deployments] == ["Ingress", "Scaled", "Leaf"]
    ingress, auto, plain = app.deployments
    assert ingress == DeploymentSchema(name="Ingress", num_replicas=2, max_ongoing_requests=8)
    assert plain == DeploymentSchema(
        name="Leaf",
        num_replicas=1,
        max_ongoing_requests=5,
        user_config={"k": 1},
        placement="inline",
    )
    assert auto.num_replicas == "auto"
    assert auto.autoscaling_config == {"min_replicas": 0, "max_replicas": 4}
    assert load_config(dump_config(config)) == config


def test_build_config_names_several_apps_by_attribute() -> None:
    """Several targets are named after their attribute and routed at ``/<name>``."""
    other = schema_targets.Adder.bind(5)
    config = build_config([(f"{TARGETS}:app", schema_targets.app), (f"{TARGETS}.other", other)])
    assert [(a.name, a.route_prefix) for a in config.applications] == [
        ("app", "/"),
        ("other", "/other"),
    ]


def test_build_config_overrides_reproduce_the_deployments() -> None:
    """Loading a built config and building its app gives the same deployment options."""
    config = load_config(dump_config(build_config([(f"{TARGETS}:app", schema_targets.app)])))
    rebuilt = build_app(config.applications[0])
    before = {n.deployment.name: n.deployment.config for n in schema_targets.app.walk()}
    assert {n.deployment.name: n.deployment.config for n in rebuilt.walk()} == before


def test_resolve_import_path_accepts_colon_and_dot_forms() -> None:
    """``module:attr`` and ``module.attr`` name the same object."""
    assert resolve_import_path(f"{TARGETS}:app") is schema_targets.app
    assert resolve_import_path(f"{TARGETS}.app") is schema_targets.app
    assert resolve_import_path(f"{TARGETS}:Adder.name") == "Adder"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_xyz:app", "import_path: no module named 'no_such_module_xyz'"),
        (f"{TARGETS}:missing", f"import_path: module '{TARGETS}' has no attribute 'missing'"),
        ("justaname", "import_path: must be 'module:attribute' or 'module.attribute'"),
    ],
)
def test_resolve_import_path_errors_say_what_is_missing(path: str, message: str) -> None:
    """A missing module or attribute is a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        resolve_import_path(path)
    assert str(info.value).startswith(message)


def test_build_app_applies_overrides_to_an_application() -> None:
    """Overrides change only the named deployments, leaving the imported graph as it was."""
    app = ApplicationSchema(
        import_path=f"{TARGETS}:app",
        deployments=[
            DeploymentSchema(name="Adder", num_replicas=3, user_config={"a": 1}),
            DeploymentSchema(name="Ingress", max_ongoing_requests=2),
        ],
    )
    built = build_app(app)
    configs = {n.deployment.name: n.deployment.config for n in built.walk()}
    assert configs["Adder"].num_replicas == 3
    assert configs["Adder"].user_config == {"a": 1}
    assert configs["Adder"].max_ongoing_requests == 5
    assert configs["Ingress"].max_ongoing_requests == 2
    assert configs["Ingress"].num_replicas == 2
    original = {n.deployment.name: n.deployment for n in schema_targets.app.walk()}
    assert original["Adder"].config.num_replicas == 1
    assert built.args[0][0].args == (1,)


def test_build_app_calls_a_builder_with_args() -> None:
    """A builder is called with the config's ``args``; overrides then apply to its graph."""
    config = load_config(YAML_CONFIG)
    built = build_app(config.applications[0], at="applications[0]")
    deps = {n.deployment.name: n.deployment for n in built.walk()}
    assert deps["Adder"].config.user_config == {"amount": 3}
    assert deps["Adder"].config.num_replicas == "auto"
    auto = deps["Adder"].config.autoscaling_config
    assert auto is not None
    assert (auto.min_replicas, auto.max_replicas) == (1, 5)
    assert deps["Ingress"].config.num_replicas == 4
    assert deps["Ingress"].config.user_config == {"threshold": 0.5}
    assert built.args[0][0].args == (3,)


def test_build_app_keeps_shared_nodes_shared() -> None:
    """A node bound into the graph twice is still one deployment after overrides."""
    shared = schema_targets.Adder.bind(1)
    graph = schema_targets.Ingress.bind([shared, shared])
    built = apply_overrides(graph, [DeploymentSchema(name="Adder", num_replicas=0)])
    first, second = built.args[0]
    assert first is second
    assert [n.deployment.name for n in built.walk()] == ["Adder", "Ingress"]


def test_build_app_override_of_unknown_deployment_errors() -> None:
    """An override naming no deployment of the app is an error naming it and its path."""
    app = ApplicationSchema(
        import_path=f"{TARGETS}:app", deployments=[DeploymentSchema(name="Nope", num_replicas=1)]
    )
    with pytest.raises(ConfigError) as info:
        build_app(app, at="applications[2]")
    assert str(info.value) == (
        "applications[2].deployments[0].name: no deployment named 'Nope' in this application; "
        "it has Adder, Ingress"
    )


@pytest.mark.parametrize(
    ("import_path", "args", "message"),
    [
        (
            f"{TARGETS}:app",
            {"a": 1},
            "args: 'tests.trioserve.schema_targets:app' is an Application",
        ),
        (
            f"{TARGETS}:Adder",
            {"a": 1},
            "args: 'tests.trioserve.schema_targets:Adder' is a Deployment",
        ),
        (f"{TARGETS}:not_a_builder", {}, "import_path: builder"),
        (f"{TARGETS}:answer", {}, "import_path: 'tests.trioserve.schema_targets:answer' is 42"),
    ],
)
def test_build_app_rejects_targets_that_are_not_applications(
    import_path: str, args: dict[str, Any], message: str
) -> None:
    """Args for an Application or a Deployment, and a non-builder, are clear errors."""
    with pytest.raises(ConfigError) as info:
        build_app(ApplicationSchema(import_path=import_path, args=args))
    assert str(info.value).startswith(message)


def test_build_app_invalid_override_errors_at_its_path() -> None:
    """An override ``Deployment.options`` refuses is an error at the option's path."""
    app = ApplicationSchema(
        import_path=f"{TARGETS}:app",
        deployments=[DeploymentSchema(name="Ingress", max_ongoing_requests=0)],
    )
    with pytest.raises(ConfigError) as info:
        build_app(app, at="applications[0]")
    assert str(info.value) == (
        "applications[0].deployments[0].max_ongoing_requests: must be an int >= 1, got 0"
    )


def test_build_app_applies_resources_and_env_vars() -> None:
    """Resource and env-var overrides (also Ray's ``ray_actor_options``) and the app's
    ``runtime_env.env_vars`` reach the deployments; a deployment's own env vars win."""
    config = load_config(
        {
            "applications": [
                _app(
                    runtime_env={"env_vars": {"MODE": "app", "SHARED": "1"}},
                    deployments=[
                        {"name": "Adder", "resources": {"num_cpus": 2, "resources": {"tpu": 1}}},
                        {
                            "name": "Ingress",
                            "ray_actor_options": {"num_gpus": 0.5},
                            "env_vars": {"MODE": "ingress"},
                        },
                    ],
                )
            ]
        }
    )
    deps = {
        n.deployment.name: n.deployment.config for n in build_app(config.applications[0]).walk()
    }
    assert deps["Adder"].resources.num_cpus == 2.0
    assert deps["Adder"].resources.custom == {"tpu": 1.0}
    assert deps["Adder"].env_vars == {"MODE": "app", "SHARED": "1"}
    assert deps["Ingress"].resources.num_gpus == 0.5
    assert deps["Ingress"].env_vars == {"MODE": "ingress", "SHARED": "1"}


def test_build_config_writes_resources_and_env_vars() -> None:
    """Resources and env vars set in code are written so that loading reproduces them."""
    dep = schema_targets.Adder.options(resources={"num_cpus": 1, "my_res": 2}, env_vars={"K": "v"})
    config = build_config([(f"{TARGETS}:app", dep.bind(1))])
    (schema,) = config.applications[0].deployments
    assert schema.resources == {"num_cpus": 1.0, "resources": {"my_res": 2.0}}
    assert schema.env_vars == {"K": "v"}
    rebuilt = apply_overrides(
        schema_targets.Adder.bind(1), list(config.applications[0].deployments)
    )
    assert rebuilt.deployment.config == dep.config


def test_build_app_binds_a_deployment_without_arguments() -> None:
    """An import path naming a Deployment serves it bound with no arguments, as the CLI does."""
    built = build_app(ApplicationSchema(import_path=f"{TARGETS}:Ingress"))
    assert built.deployment.name == "Ingress"
    assert (built.args, built.kwargs) == ((), {})

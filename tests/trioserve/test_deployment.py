"""``@deployment``, ``Deployment.options`` / ``.bind`` and bound graphs (``Application``)."""

from __future__ import annotations

import re

import pytest

import trioserve as serve

from . import serve_fixtures as fx


class Plain:
    def __call__(self, x: int) -> int:
        return x


def plain_function(x: int) -> int:
    return x


def test_deployment_decorator_without_arguments() -> None:
    """Bare ``@deployment`` names the deployment after the class, with default options."""
    dep = serve.deployment(Plain)
    assert isinstance(dep, serve.Deployment)
    assert dep.name == "Plain"
    assert dep.target is Plain
    assert dep.config == serve.DeploymentConfig()
    assert not dep.is_function


def test_deployment_decorator_with_options() -> None:
    """``@deployment(...)`` keeps the options given, and the name if given."""
    dep = serve.deployment(
        name="scaled",
        num_replicas=3,
        max_ongoing_requests=8,
        max_queued_requests=4,
        user_config={"k": 1},
        placement="inline",
    )(Plain)
    assert dep.name == "scaled"
    assert dep.config.num_replicas == 3
    assert dep.config.max_ongoing_requests == 8
    assert dep.config.max_queued_requests == 4
    assert dep.config.user_config == {"k": 1}
    assert dep.config.placement == "inline"


def test_deployment_decorator_on_function() -> None:
    """A function becomes a function deployment named after it."""
    dep = serve.deployment(plain_function)
    assert dep.name == "plain_function"
    assert dep.is_function
    assert fx.double.is_function


def test_deployment_decorator_autoscaling_dict_becomes_config() -> None:
    """An autoscaling_config dict is validated into an AutoscalingConfig."""
    dep = serve.deployment(
        num_replicas="auto", autoscaling_config={"min_replicas": 2, "max_replicas": 4}
    )(Plain)
    assert dep.config.autoscaling_config == serve.AutoscalingConfig(min_replicas=2, max_replicas=4)
    assert dep.config.initial_replicas == 2


def test_deployment_decorator_refuses_unknown_option() -> None:
    """A misspelt option is refused, naming it and listing the known ones."""
    with pytest.raises(
        TypeError, match=r"unknown deployment option\(s\) \['max_ongoing'\]"
    ) as info:
        serve.deployment(max_ongoing=3)(Plain)
    assert "max_ongoing_requests" in str(info.value)


def test_deployment_decorator_refuses_bad_option_value() -> None:
    """A bad option value fails at decoration time with the value in the message."""
    with pytest.raises(ValueError, match="max_ongoing_requests must be an int >= 1, got 0"):
        serve.deployment(max_ongoing_requests=0)(Plain)
    with pytest.raises(ValueError, match=re.escape("unknown autoscaling_config field(s) ['mx']")):
        serve.deployment(autoscaling_config={"mx": 3})(Plain)


@pytest.mark.parametrize("name", ["a/b", "replica#1", 5])
def test_deployment_decorator_refuses_bad_name(name: object) -> None:
    """Names must be non-empty strings without '/' or '#' (they appear in replica ids)."""
    with pytest.raises(ValueError, match=re.escape(f"got {name!r}")):
        serve.deployment(name=name)(Plain)


def test_deployment_decorator_refuses_empty_name() -> None:
    """An explicitly empty name is refused, as ``.options(name='')`` refuses it."""
    with pytest.raises(ValueError, match="got ''"):
        serve.deployment(name="")(Plain)


def test_deployment_decorator_refuses_non_callable() -> None:
    """Only classes and functions can be deployed."""
    with pytest.raises(TypeError, match="needs a class or a function, got 42"):
        serve.deployment(name="x")(42)  # type: ignore[arg-type]


def test_deployment_options_returns_changed_copy() -> None:
    """``.options()`` makes a new deployment; the original keeps its options."""
    base = serve.deployment(num_replicas=2)(Plain)
    changed = base.options(num_replicas=5, name="other")
    assert changed is not base
    assert (changed.name, changed.config.num_replicas) == ("other", 5)
    assert (base.name, base.config.num_replicas) == ("Plain", 2)
    assert changed.target is Plain
    assert base.options(max_ongoing_requests=1).name == "Plain"


def test_deployment_options_validates_like_decorator() -> None:
    """``.options()`` refuses unknown names, bad values and bad names too."""
    dep = serve.deployment(Plain)
    with pytest.raises(TypeError, match="unknown deployment option"):
        dep.options(replicas=2)
    with pytest.raises(ValueError, match="num_replicas must be an int >= 0 or 'auto', got -1"):
        dep.options(num_replicas=-1)
    with pytest.raises(ValueError, match="deployment name"):
        dep.options(name="a/b")


def test_deployment_bind_keeps_arguments() -> None:
    """``.bind(*args, **kwargs)`` records the constructor arguments in an Application."""
    app = fx.Model.bind(3)
    assert isinstance(app, serve.Application)
    assert app.deployment is fx.Model
    assert app.args == (3,)
    assert app.kwargs == {}
    assert fx.Adder.bind(amount=2).kwargs == {"amount": 2}


def test_deployment_bind_function_takes_no_arguments() -> None:
    """A function deployment has no constructor, so bind() arguments are refused."""
    assert fx.double.bind().args == ()
    with pytest.raises(TypeError, match="function deployment 'double' takes no bind"):
        fx.double.bind(1)


def test_application_walk_lists_downstream_first() -> None:
    """Every deployment of a graph is found, in lists and dicts, before its caller."""
    a, b, c = (fx.Adder.options(name=n).bind(i) for i, n in enumerate("ABC"))
    root = fx.Holder.bind([a, (b,)], {"c": c})
    names = [node.deployment.name for node in root.walk()]
    assert names == ["A", "B", "C", "Holder"]


def test_application_walk_shared_node_once() -> None:
    """A node bound into two places (a diamond) is deployed once."""
    shared = fx.Adder.bind(1)
    left = fx.Forwarder.options(name="Left").bind(shared)
    right = fx.Forwarder.options(name="Right").bind(shared)
    root = fx.Holder.bind([left, right], {"again": shared})
    names = [node.deployment.name for node in root.walk()]
    assert names == ["Adder", "Left", "Right", "Holder"]
    assert [n for n in root.walk() if n.deployment.name == "Adder"] == [shared]


def test_application_walk_names_a_second_binding_name_1() -> None:
    """Two bindings of one deployment become two deployments, the second named
    ``Adder_1`` (Ray Serve's rule), also when their options differ."""
    root = fx.Holder.bind([fx.Adder.bind(1), fx.Adder.bind(2)], {})
    names = sorted(node.deployment.name for node in root.walk())
    assert names == ["Adder", "Adder_1", "Holder"]
    other = fx.Adder.options(max_ongoing_requests=1)
    names = sorted(
        n.deployment.name for n in fx.Holder.bind([fx.Adder.bind(1), other.bind(1)], {}).walk()
    )
    assert names == ["Adder", "Adder_1", "Holder"]


@pytest.mark.slow
async def test_deployment_bind_applications_in_containers_become_handles() -> None:
    """Applications bound inside a list and a dict reach the replica as DeploymentHandles."""
    app = fx.Holder.bind(
        [fx.Adder.options(name="Plus1").bind(1), fx.double.bind()],
        {"ten": fx.Adder.options(name="Plus10").bind(10)},
    )
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(app, name="graph")
        assert await handle.kinds.remote() == ["DeploymentHandle"] * 3
        assert await handle.remote(5) == {"items": [6, 10], "named": {"ten": 15}}
        status = await instance.status()
        deployments = status.applications["graph"].deployments
        assert sorted(deployments) == ["Holder", "Plus1", "Plus10", "double"]
        assert all(d.status == "HEALTHY" for d in deployments.values())

"""The controller's deploy plan, worked out without I/O."""

from __future__ import annotations

import trioserve as serve
from trioserve._control.controller import plan_deployments
from trioserve._handles.handle import DeploymentHandle


@serve.deployment
class Model:
    def __init__(self, scale: int) -> None:
        self.scale = scale


@serve.deployment(num_replicas=2)
class Ingress:
    def __init__(self, model: object, *, label: str) -> None:
        self.model = model


def test_plan_replaces_bound_applications_by_handles() -> None:
    app = Ingress.bind(Model.bind(3), label="x")
    plans = plan_deployments(app.walk(), "demo")
    assert set(plans) == {"Ingress", "Model"}
    ingress = plans["Ingress"]
    (model_handle,) = ingress.args
    assert isinstance(model_handle, DeploymentHandle)
    assert (model_handle.deployment_name, model_handle.app_name) == ("Model", "demo")
    assert ingress.kwargs == {"label": "x"}
    assert ingress.config.num_replicas == 2
    assert plans["Model"].args == (3,)


def test_plan_forced_inline_changes_only_the_placement() -> None:
    app = Ingress.bind(Model.bind(3), label="x")
    plans = plan_deployments(app.walk(), "demo", force_inline=True)
    assert {p.config.placement for p in plans.values()} == {"inline"}
    assert plans["Ingress"].config.num_replicas == 2

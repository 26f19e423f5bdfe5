"""Errors: user exceptions cross the process boundary as themselves; failures are ServeErrors."""

from __future__ import annotations

import pytest

import trioserve as serve

from . import serve_fixtures as fx


def _remote_traceback(error: BaseException) -> str:
    notes = "\n".join(getattr(error, "__notes__", []))
    assert "Remote traceback" in notes
    text: str = getattr(error, "remote_traceback", "")
    assert text
    return text


@pytest.mark.slow
async def test_errors_user_exception_reaches_caller() -> None:
    """User errors arrive with type, message and remote traceback; the replica lives on."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Faulty.bind(), name="faulty")
        with pytest.raises(ValueError, match=r"^bad value 42") as builtin:
            await handle.value_error.remote(42)
        assert str(builtin.value) == "bad value 42"
        remote_tb = _remote_traceback(builtin.value)
        assert "in value_error" in remote_tb
        assert "ValueError: bad value 42" in remote_tb

        with pytest.raises(fx.CustomError, match=r"^custom failure") as custom:
            await handle.custom_error.remote("custom failure")
        assert str(custom.value) == "custom failure"
        assert type(custom.value) is fx.CustomError
        assert "in custom_error" in _remote_traceback(custom.value)
        assert not isinstance(custom.value, serve.ServeError)

        assert await handle.ok.remote() == "ok"


@pytest.mark.slow
async def test_errors_unknown_and_private_methods_refused() -> None:
    """Calling a method the deployment lacks (or a private one) fails that call only."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Hanger.bind(), name="methods")
        with pytest.raises(AttributeError, match="has no method 'missing'"):
            await handle.missing.remote()
        with pytest.raises(AttributeError, match="private"):
            await handle.options(method_name="_event").remote()
        with pytest.raises(TypeError):
            await handle.pid.remote("unexpected argument")
        assert isinstance(await handle.pid.remote(), int)


@pytest.mark.slow
async def test_errors_constructor_failure_fails_run() -> None:
    """A raising constructor fails run() from that error; status shows DEPLOY_FAILED."""
    async with serve.open_serve(http_port=None) as instance:
        with pytest.raises(serve.DeploymentFailedError) as info:
            await instance.run(fx.BrokenInit.bind(7), name="broken")
        error = info.value
        assert isinstance(error, serve.ServeError)
        assert error.deployment == "BrokenInit"
        assert type(error.__cause__) is fx.CustomError
        assert str(error.__cause__) == "constructor failed with code 7"
        assert "constructor failed with code 7" in str(error)

        status = await instance.status()
        app = status.applications["broken"]
        assert app.status == "DEPLOY_FAILED"
        assert "constructor failed with code 7" in app.message
        deployment = app.deployments["BrokenInit"]
        assert deployment.status == "DEPLOY_FAILED"
        assert "constructor failed with code 7" in deployment.message
        assert deployment.replicas == []

        # the instance still works for other applications
        handle = await instance.run(fx.Model.bind(2), name="fine", route_prefix="/fine")
        assert await handle.remote(4) == 8


async def test_errors_unknown_application_or_deployment_unavailable() -> None:
    """Handles to missing apps or deployments fail with DeploymentUnavailableError."""
    async with serve.open_serve(http_port=None) as instance:
        await instance.run(fx.double.options(placement="inline").bind(), name="real")
        with pytest.raises(serve.DeploymentUnavailableError, match="no application named 'nope'"):
            instance.get_app_handle("nope")
        handle = instance.get_deployment_handle("Ghost", app_name="real")
        with pytest.raises(serve.DeploymentUnavailableError, match="no deployment 'Ghost'") as info:
            await handle.remote(1)
        assert "real/double" in str(info.value)
        elsewhere = instance.get_deployment_handle("double", app_name="other")
        with pytest.raises(serve.DeploymentUnavailableError):
            await elsewhere.remote(1)


async def test_errors_handle_without_instance_is_unavailable() -> None:
    """A handle used where no serve instance runs says how to start one."""
    handle = serve.DeploymentHandle("Model")
    with pytest.raises(serve.DeploymentUnavailableError, match="no serve instance is running"):
        handle.remote(1)

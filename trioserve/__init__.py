"""trioserve: model serving on Trio -- deployments, handles, supervised replica processes."""

from __future__ import annotations

from starlette.requests import Request as Request

from ._api import delete as delete
from ._api import get as get
from ._api import get_app_handle as get_app_handle
from ._api import get_async as get_async
from ._api import get_deployment_handle as get_deployment_handle
from ._api import get_replica_context as get_replica_context
from ._api import run as run
from ._api import run_config as run_config
from ._api import shutdown as shutdown
from ._api import start as start
from ._api import status as status
from ._api import wait as wait
from ._api import wait_async as wait_async
from ._config import AutoscalingConfig as AutoscalingConfig
from ._config import DeploymentConfig as DeploymentConfig
from ._deployment import Application as Application
from ._deployment import Deployment as Deployment
from ._deployment import deployment as deployment
from ._handles.context import ReplicaContext as ReplicaContext
from ._handles.handle import DeploymentHandle as DeploymentHandle
from ._handles.handle import SyncHandle as SyncHandle
from ._handles.handle import SyncResponse as SyncResponse
from ._handles.handle import SyncResponseGenerator as SyncResponseGenerator
from ._handles.response import DeploymentResponse as DeploymentResponse
from ._handles.response import DeploymentResponseGenerator as DeploymentResponseGenerator
from ._http.server import HTTPLimits as HTTPLimits
from ._instance import ServeInstance as ServeInstance
from ._instance import open_serve as open_serve
from ._replica.asgi import ingress as ingress
from ._replica.batching import batch as batch
from ._replica.http import Response as Response
from ._replica.multiplex import get_multiplexed_model_id as get_multiplexed_model_id
from ._replica.multiplex import multiplexed as multiplexed
from ._replica.request_context import RequestContext as RequestContext
from ._replica.request_context import get_request_context as get_request_context
from ._status import ApplicationStatus as ApplicationStatus
from ._status import DeploymentStatus as DeploymentStatus
from ._status import ReplicaStatus as ReplicaStatus
from ._status import ServeStatus as ServeStatus
from .config import HTTPOptions as HTTPOptions
from .exceptions import BackPressureError as BackPressureError
from .exceptions import ConfigError as ConfigError
from .exceptions import DeploymentFailedError as DeploymentFailedError
from .exceptions import DeploymentUnavailableError as DeploymentUnavailableError
from .exceptions import PortInUseError as PortInUseError
from .exceptions import ReplicaDiedError as ReplicaDiedError
from .exceptions import RequestCancelledError as RequestCancelledError
from .exceptions import RequestTimeoutError as RequestTimeoutError
from .exceptions import RequestTooLargeError as RequestTooLargeError
from .exceptions import ServeError as ServeError
from .exceptions import ServeNotRunningError as ServeNotRunningError
from .exceptions import ServeShutdownError as ServeShutdownError

__all__ = [
    "Application",
    "ApplicationStatus",
    "AutoscalingConfig",
    "BackPressureError",
    "ConfigError",
    "Deployment",
    "DeploymentConfig",
    "DeploymentFailedError",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "DeploymentStatus",
    "DeploymentUnavailableError",
    "HTTPLimits",
    "HTTPOptions",
    "PortInUseError",
    "ReplicaContext",
    "ReplicaDiedError",
    "ReplicaStatus",
    "Request",
    "RequestCancelledError",
    "RequestContext",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "Response",
    "ServeError",
    "ServeInstance",
    "ServeNotRunningError",
    "ServeShutdownError",
    "ServeStatus",
    "SyncHandle",
    "SyncResponse",
    "SyncResponseGenerator",
    "batch",
    "delete",
    "deployment",
    "get",
    "get_app_handle",
    "get_async",
    "get_deployment_handle",
    "get_multiplexed_model_id",
    "get_replica_context",
    "get_request_context",
    "ingress",
    "multiplexed",
    "open_serve",
    "run",
    "run_config",
    "shutdown",
    "start",
    "status",
    "wait",
    "wait_async",
]


def _fixup_module_metadata() -> None:
    """Public names say where users import them from: reprs and tracebacks read
    ``trioserve.Name``, not the private module that defines it (trio does the same)."""
    namespace = globals()
    for name in __all__:
        obj = namespace[name]
        module = getattr(obj, "__module__", "")
        if module.startswith("trioserve._") and getattr(obj, "__qualname__", None) == name:
            obj.__module__ = "trioserve"


_fixup_module_metadata()
del _fixup_module_metadata

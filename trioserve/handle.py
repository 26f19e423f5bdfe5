"""Ray Serve's import path for handles: ``from trioserve.handle import DeploymentHandle``."""

from __future__ import annotations

from ._handles.handle import DeploymentHandle as DeploymentHandle
from ._handles.response import DeploymentResponse as DeploymentResponse
from ._handles.response import DeploymentResponseGenerator as DeploymentResponseGenerator

__all__ = ["DeploymentHandle", "DeploymentResponse", "DeploymentResponseGenerator"]

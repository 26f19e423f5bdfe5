"""A mypy plugin for ``@serve.deployment`` on classes.

mypy ignores what a class decorator returns, so ``Model.bind(...)`` on a decorated class
would be an error. With ``plugins = ["trioserve.mypy_plugin"]`` in the mypy configuration,
decorated classes get the ``Deployment`` methods (``bind``, ``options``, ``get_handle``)
and attributes (``name``) as static members.
"""

from __future__ import annotations

from collections.abc import Callable

from mypy.nodes import ARG_OPT, ARG_STAR, ARG_STAR2, Argument, TypeInfo, Var
from mypy.plugin import ClassDefContext, Plugin
from mypy.plugins.common import add_attribute_to_class, add_method_to_class
from mypy.types import AnyType, Instance, Type, TypeOfAny

DECORATOR = "trioserve._deployment.deployment"


def _instance(ctx: ClassDefContext, fullname: str) -> Type:
    sym = ctx.api.lookup_fully_qualified_or_none(fullname)
    if sym is None or not isinstance(sym.node, TypeInfo):
        return AnyType(TypeOfAny.special_form)
    return Instance(sym.node, [])


def _add_deployment_members(ctx: ClassDefContext) -> bool:
    anything = AnyType(TypeOfAny.explicit)
    star = [
        Argument(Var("args", anything), anything, None, ARG_STAR),
        Argument(Var("kwargs", anything), anything, None, ARG_STAR2),
    ]
    kwargs_only = [Argument(Var("options", anything), anything, None, ARG_STAR2)]
    application = _instance(ctx, "trioserve._deployment.Application")
    deployment = _instance(ctx, "trioserve._deployment.Deployment")
    missing = isinstance(application, AnyType) or isinstance(deployment, AnyType)
    if missing and not ctx.api.final_iteration:
        ctx.api.defer()
        return False
    add_method_to_class(ctx.api, ctx.cls, "bind", star, application, is_staticmethod=True)
    add_method_to_class(ctx.api, ctx.cls, "options", kwargs_only, deployment, is_staticmethod=True)
    add_method_to_class(
        ctx.api,
        ctx.cls,
        "get_handle",
        [Argument(Var("sync", anything), anything, None, ARG_OPT)],
        anything,
        is_staticmethod=True,
    )
    add_attribute_to_class(ctx.api, ctx.cls, "name", ctx.api.named_type("builtins.str"))
    return True


class TrioservePlugin(Plugin):
    def get_class_decorator_hook_2(self, fullname: str) -> Callable[[ClassDefContext], bool] | None:
        if fullname == DECORATOR:
            return _add_deployment_members
        return None


def plugin(version: str) -> type[Plugin]:
    return TrioservePlugin

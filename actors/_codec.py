"""Payload codec (sans-IO): msgpack for plain data, a pickle extension for everything else.

Plain data (``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes`` and lists / str-keyed
dicts of them) travels as msgpack and comes back as the same types. Anything else (tuples,
dataclasses, Structs, user classes, exceptions) travels as a msgpack extension holding a
cloudpickle, so it comes back as itself. Pickles are decoded only when the caller says the
connection is authenticated (``allow_pickle=True``).

Code shipped by value (functions and classes from the user's ``__main__`` script) keeps its
file name, so tracebacks raised in it name the user's file, line and source line (cloudpickle
itself replaces the file name with ``<dynamic-code>``).

An exception travels as a pickle when it can be rebuilt from one: by its own ``__reduce__``
when that round-trips, else by its type, ``args`` and ``__dict__`` (for the many exceptions
whose constructor takes other arguments than ``args``). Only an exception that cannot be
pickled, or not unpickled at the caller, arrives as :class:`RemoteError`.
"""

from __future__ import annotations

import importlib
import io
import traceback
import types
from collections import ChainMap
from collections.abc import Callable
from typing import Any

import cloudpickle
import msgspec

from ._wire import Call, ErrorInfo, Result
from .exceptions import ProtocolError, RemoteError

PICKLE_EXT = 1
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
_MAX_DEPTH = 64
_encoder = msgspec.msgpack.Encoder()


_DYNAMIC_FILENAME = "<dynamic-code>"
_cloudpickle_code_reduce: Callable[[types.CodeType], tuple[Any, tuple[Any, ...]]] = (
    cloudpickle.Pickler.dispatch_table[types.CodeType]
)


def _code_reduce(code: types.CodeType) -> tuple[Any, tuple[Any, ...]]:
    """cloudpickle's reduction of a code object, with its real ``co_filename`` back."""
    rebuild, args = _cloudpickle_code_reduce(code)
    if _DYNAMIC_FILENAME in args and code.co_filename != _DYNAMIC_FILENAME:
        at = args.index(_DYNAMIC_FILENAME)  # co_filename comes before co_name
        args = (*args[:at], code.co_filename, *args[at + 1 :])
    return rebuild, args


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # why: cloudpickle is untyped
    dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)


def dumps(obj: object) -> bytes:
    """``cloudpickle.dumps``, keeping the file names of code shipped by value."""
    with io.BytesIO() as file:
        _Pickler(file, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
        return file.getvalue()


def _is_plain(obj: object, depth: int = 0) -> bool:
    t = type(obj)
    if t in _SCALARS:
        return t is not int or -(2**63) <= obj < 2**64  # type: ignore[operator]  # why: obj is an int here
    if depth > _MAX_DEPTH:
        return False
    if t is list:
        if set(map(type, obj)) <= _SCALARS - {int}:  # type: ignore[call-overload]  # why: obj is a list here
            return True
        return all(_is_plain(x, depth + 1) for x in obj)  # type: ignore[attr-defined]  # why: obj is a list here
    if t is dict:
        return all(
            type(k) is str and _is_plain(v, depth + 1)
            for k, v in obj.items()  # type: ignore[attr-defined]  # why: obj is a dict here
        )
    return False


def wrap(obj: object) -> object:
    """Return ``obj`` itself if msgpack carries it faithfully, else a pickle extension."""
    if _is_plain(obj):
        return obj
    return msgspec.msgpack.Ext(PICKLE_EXT, dumps(obj))


def encode_value(obj: object) -> bytes:
    return _encoder.encode(wrap(obj))


def encode_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    return _encoder.encode([[wrap(a) for a in args], {k: wrap(v) for k, v in kwargs.items()}])


_CALL_TAG = Call.__struct_config__.tag
_RESULT_TAG = Result.__struct_config__.tag


def encode_call(
    call_id: int,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None = None,
    stream: bool = False,
    duplex: bool = False,
) -> bytes:
    """A whole ``Call`` envelope, encoded in one pass: the same bytes as encoding a ``Call``
    whose payload is ``encode_args(args, kwargs)``, without encoding the payload apart
    (trailing fields left at their defaults are omitted, as a decoder allows)."""
    payload = [[wrap(a) for a in args], {k: wrap(v) for k, v in kwargs.items()}]
    if timeout is None and not stream and not duplex:
        return _encoder.encode((_CALL_TAG, call_id, method, payload))
    return _encoder.encode((_CALL_TAG, call_id, method, payload, timeout, stream, duplex))


def encode_result(call_id: int, value: object) -> bytes:
    """A whole ``Result`` envelope for ``value``, encoded in one pass."""
    return _encoder.encode((_RESULT_TAG, call_id, wrap(value)))


def _ext_allowed(code: int, data: memoryview) -> Any:
    if code != PICKLE_EXT:
        raise ProtocolError(f"unknown msgpack extension type {code}")
    return cloudpickle.loads(data)


def _ext_refused(code: int, data: memoryview) -> Any:
    raise ProtocolError("pickled payloads are refused on an unauthenticated connection")


_trusted = msgspec.msgpack.Decoder(ext_hook=_ext_allowed)
_untrusted = msgspec.msgpack.Decoder(ext_hook=_ext_refused)


def decode_value(data: bytes | msgspec.Raw, *, allow_pickle: bool = True) -> Any:
    """Decode one payload; raises for malformed data (the caller fails just that call)."""
    try:
        return (_trusted if allow_pickle else _untrusted).decode(data)
    except RecursionError:
        raise msgspec.DecodeError("malformed payload: nested too deeply to decode") from None
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError(f"malformed payload: {exc!r}") from None


def decode_args(
    data: bytes | msgspec.Raw, *, allow_pickle: bool = True
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    decoded = decode_value(data, allow_pickle=allow_pickle)
    if (
        type(decoded) is not list
        or len(decoded) != 2
        or type(decoded[0]) is not list
        or type(decoded[1]) is not dict
    ):
        raise ProtocolError("call payload must be [args, kwargs]")
    return tuple(decoded[0]), decoded[1]


# ---------------------------------------------------------------------------------------------
# Exceptions


def _new_error(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    """Unpickle an exception by state: no constructor call."""
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class _ErrorByState:
    """Pickles as the exception it holds, rebuilt by :func:`_new_error`."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        return (_new_error, (type(exc), exc.args, dict(vars(exc))))


def _pickle_error(exc: BaseException) -> bytes | None:
    """A pickle of ``exc`` that unpickles (here at least) as its own type, or ``None``."""
    try:
        pickled = dumps(exc)
        if type(cloudpickle.loads(pickled)) is type(exc):
            return pickled
    except Exception:  # why: its own reduction fails (a constructor with other arguments)
        pass
    try:
        return dumps(_ErrorByState(exc))
    except Exception:  # why: an exception that cannot be pickled still travels as text
        return None


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe ``exc`` for the wire: type, message, traceback text, and a pickle if possible."""
    tb = "".join(traceback.format_exception(exc))
    cls = type(exc)
    return ErrorInfo(
        module=cls.__module__,
        qualname=cls.__qualname__,
        message=str(exc),
        traceback=tb,
        pickled=_pickle_error(exc),
    )


def encode_error(exc: BaseException) -> bytes:
    return _encoder.encode(error_info(exc))


_info_decoder = msgspec.msgpack.Decoder(ErrorInfo)


def _rebuild(info: ErrorInfo) -> BaseException:
    if info.pickled is not None:
        try:
            exc = cloudpickle.loads(info.pickled)
            if isinstance(exc, BaseException):
                return exc
        except Exception:  # why: fall back to rebuilding from the type's name
            pass
    try:
        obj: Any = importlib.import_module(info.module)
        for part in info.qualname.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, Exception):
            return obj(info.message)
    except Exception:  # why: unknown or unbuildable type; fall back to RemoteError
        pass
    return RemoteError(f"{info.module}.{info.qualname}", info.message, info.traceback)


def decode_error(data: bytes | msgspec.Raw) -> BaseException:
    """Rebuild a remote exception with its type when importable; the remote traceback is
    attached as a note (and as ``remote_traceback``)."""
    try:
        info = _info_decoder.decode(data)
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError) as bad:
        return ProtocolError(f"malformed error payload: {bad!r}")
    error = _rebuild(info)
    try:
        error.add_note(f"Remote traceback:\n{info.traceback.rstrip()}")
        error.remote_traceback = info.traceback  # type: ignore[attr-defined]  # why: added to any exception
    except Exception:  # why: exotic exception types may refuse attributes; the type still matters
        pass
    return error

"""Payload codec (sans-IO): msgpack for plain data, a pickle extension for everything else.

Plain data (``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes`` and lists / str-keyed
dicts of them) travels as msgpack and comes back as the same types. Anything else (tuples,
dataclasses, Structs, user classes, exceptions) travels as a msgpack extension holding a
cloudpickle, so it comes back as itself. Pickles are decoded only when the caller says the
connection is authenticated (``allow_pickle=True``).
"""

from __future__ import annotations

import importlib
import traceback
from typing import Any

import cloudpickle
import msgspec

from ._wire import ErrorInfo
from .exceptions import ProtocolError, RemoteError

PICKLE_EXT = 1
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
_MAX_DEPTH = 64
_encoder = msgspec.msgpack.Encoder()


def _is_plain(obj: object, depth: int = 0) -> bool:
    t = type(obj)
    if t in _SCALARS:
        return t is not int or -(2**63) <= obj < 2**64  # type: ignore[operator]
    if depth > _MAX_DEPTH:
        return False
    if t is list:
        if set(map(type, obj)) <= _SCALARS - {int}:  # type: ignore[call-overload]
            return True
        return all(_is_plain(x, depth + 1) for x in obj)  # type: ignore[attr-defined]
    if t is dict:
        return all(
            type(k) is str and _is_plain(v, depth + 1)
            for k, v in obj.items()  # type: ignore[attr-defined]
        )
    return False


def wrap(obj: object) -> object:
    """Return ``obj`` itself if msgpack carries it faithfully, else a pickle extension."""
    if _is_plain(obj):
        return obj
    return msgspec.msgpack.Ext(PICKLE_EXT, cloudpickle.dumps(obj))


def encode_value(obj: object) -> bytes:
    return _encoder.encode(wrap(obj))


def encode_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    return _encoder.encode([[wrap(a) for a in args], {k: wrap(v) for k, v in kwargs.items()}])


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


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe ``exc`` for the wire: type, message, traceback text, and a pickle if possible."""
    tb = "".join(traceback.format_exception(exc))
    try:
        pickled: bytes | None = cloudpickle.dumps(exc)
    except Exception:  # why: an exception that cannot be pickled still travels as text
        pickled = None
    cls = type(exc)
    return ErrorInfo(
        module=cls.__module__,
        qualname=cls.__qualname__,
        message=str(exc),
        traceback=tb,
        pickled=pickled,
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
        error.remote_traceback = info.traceback  # type: ignore[attr-defined]
    except Exception:  # why: exotic exception types may refuse attributes; the type still matters
        pass
    return error

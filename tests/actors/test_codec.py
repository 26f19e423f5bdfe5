"""The payload codec (sans-IO): plain msgpack for plain data, pickles for the rest."""

from __future__ import annotations

import dataclasses
import sys
import threading
from typing import Any

import cloudpickle
import msgspec
import pytest

import actors
from actors import _codec
from actors._wire import ErrorInfo

from .actors_fixtures import CustomError


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class Box:
    """A user class with no special support for any codec."""

    def __init__(self, content: object) -> None:
        self.content = content

    def __eq__(self, other: object) -> bool:
        return type(other) is Box and other.content == self.content

    def __hash__(self) -> int:
        return hash(self.content)

    def __repr__(self) -> str:
        # the test ids (ids=repr) must be the same in every pytest-xdist worker
        return f"Box({self.content!r})"


class Tagged(msgspec.Struct, frozen=True):
    name: str
    values: list[int]


#: what unpickling a :class:`Tripwire` did (it must stay empty when pickles are refused)
TRIPPED: list[str] = []


def _trip(note: str) -> str:
    TRIPPED.append(note)
    return note


class Tripwire:
    """Runs ``_trip`` when unpickled: a stand-in for a hostile pickle."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _trip, ("unpickled",)


class LockedError(ValueError):
    """An importable exception type that cannot be pickled (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


PLAIN = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    "text",
    b"\x00\xffbytes",
    [],
    {},
    [1, "a", None, 2.5, b"b", True],
    {"a": [1, {"b": [True, None, -(2**63)]}], "c": "d"},
]

NOT_PLAIN = [
    (1, 2),
    (),
    Point(1, 2),
    Box([1, 2]),
    Tagged("t", [1, 2]),
    {1, 2, 3},
    {1: "int key"},
    2**64,
    -(2**63) - 1,
    10**40,
    [1, 2**70],
    {"a": [1, (2, 3)], "b": {"c": Box(Point(0, 0))}},
    [[[[(1,)]]]],
]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_codec_plain_values_stay_plain_msgpack(value: object) -> None:
    """Plain data is ordinary msgpack any peer can read, and comes back as the same types."""
    data = _codec.encode_value(value)
    assert msgspec.msgpack.decode(data) == value
    decoded = _codec.decode_value(data, allow_pickle=False)
    assert decoded == value
    assert type(decoded) is type(value)


@pytest.mark.parametrize("value", NOT_PLAIN, ids=repr)
def test_codec_other_values_round_trip_as_themselves(value: object) -> None:
    """Tuples, dataclasses, Structs, user classes, sets, non-str keys and ints beyond 64 bits
    come back equal and with their own types, however deeply nested."""
    data = _codec.encode_value(value)
    assert isinstance(msgspec.msgpack.decode(data), msgspec.msgpack.Ext)
    decoded = _codec.decode_value(data)
    assert decoded == value
    assert type(decoded) is type(value)


@pytest.mark.parametrize("value", [2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 3**100, -(3**100)])
def test_codec_ints_round_trip_at_any_size(value: int) -> None:
    """An int of any size comes back as the same int, on either side of msgpack's 64-bit range."""
    decoded = _codec.decode_value(_codec.encode_value(value))
    assert decoded == value
    assert type(decoded) is int


def test_codec_deeply_nested_plain_data_round_trips() -> None:
    """Plain data nested deeper than the plain-data check looks still round-trips."""
    value: list[Any] = [1]
    for _ in range(200):
        value = [value]
    assert _codec.decode_value(_codec.encode_value(value)) == value


def test_codec_args_round_trip() -> None:
    """Positional and keyword arguments of any kind reach the actor as they were sent."""
    args = (1, (2, 3), Point(4, 5), "s", None)
    kwargs = {"box": Box(b"x"), "plain": [1, 2], "big": 2**65}
    decoded_args, decoded_kwargs = _codec.decode_args(_codec.encode_args(args, kwargs))
    assert decoded_args == args
    assert type(decoded_args) is tuple
    assert decoded_kwargs == kwargs


@pytest.mark.parametrize(
    "payload",
    [5, "args", [], [[1]], [[1], {}, 3], [{}, []], [[1], [2]]],
    ids=repr,
)
def test_codec_args_malformed_payload_raises_protocol_error(payload: object) -> None:
    """A call payload that is not ``[args, kwargs]`` is a ProtocolError, not a crash."""
    with pytest.raises(actors.ProtocolError):
        _codec.decode_args(msgspec.msgpack.encode(payload))


@pytest.mark.parametrize("value", [(1,), Point(0, 1), Box("x"), 2**64], ids=repr)
def test_codec_pickles_refused_without_allow_pickle(value: object) -> None:
    """On a connection that is not authenticated, a pickled payload is refused."""
    data = _codec.encode_value(value)
    with pytest.raises(actors.ProtocolError):
        _codec.decode_value(data, allow_pickle=False)
    with pytest.raises(actors.ProtocolError):
        _codec.decode_args(_codec.encode_args((value,), {}), allow_pickle=False)


def test_codec_refused_pickle_is_never_unpickled() -> None:
    """A refused pickle runs no code: the tripwire an unpickling would set stays untouched."""
    TRIPPED.clear()
    data = _codec.encode_value(Tripwire())
    with pytest.raises(actors.ProtocolError):
        _codec.decode_value(data, allow_pickle=False)
    assert TRIPPED == []
    assert _codec.decode_value(data) == "unpickled"  # the same bytes do run when allowed
    assert TRIPPED == ["unpickled"]


def test_codec_unknown_extension_type_raises_protocol_error() -> None:
    """A msgpack extension other than the pickle one is refused even when pickles are allowed."""
    data = msgspec.msgpack.encode(msgspec.msgpack.Ext(_codec.PICKLE_EXT + 6, b"data"))
    with pytest.raises(actors.ProtocolError):
        _codec.decode_value(data)


def _raise_custom(message: str) -> None:
    raise CustomError(message)


def _raise_locked(message: str) -> None:
    raise LockedError(message)


def _caught(fn: Any, *args: Any) -> BaseException:
    try:
        fn(*args)
    except BaseException as exc:  # why: the test needs the exception with its traceback
        return exc
    raise AssertionError("expected an exception")


def test_codec_error_round_trip_keeps_type_message_and_traceback() -> None:
    """A raised exception arrives with its type, its message and its remote traceback."""
    original = _caught(_raise_custom, "bad thing")
    rebuilt = _codec.decode_error(_codec.encode_error(original))
    assert type(rebuilt) is CustomError
    assert str(rebuilt) == "bad thing"
    remote_tb = rebuilt.remote_traceback  # type: ignore[attr-defined]
    assert "_raise_custom" in remote_tb
    assert "CustomError: bad thing" in remote_tb
    assert any(remote_tb.rstrip() in note for note in rebuilt.__notes__)


def test_codec_error_info_describes_the_exception() -> None:
    """The wire description names the exception's module, type and message."""
    info = _codec.error_info(_caught(_raise_custom, "described"))
    assert (info.module, info.qualname) == (CustomError.__module__, CustomError.__qualname__)
    assert info.message == "described"
    assert info.pickled is not None


def test_codec_unpicklable_error_is_rebuilt_from_its_type_name() -> None:
    """An exception that cannot be pickled still arrives as its (importable) type."""
    original = _caught(_raise_locked, "locked out")
    info = _codec.error_info(original)
    assert info.pickled is None
    rebuilt = _codec.decode_error(_codec.encode_error(original))
    assert type(rebuilt) is LockedError
    assert str(rebuilt) == "locked out"


def test_codec_corrupt_error_pickle_falls_back_to_type_name() -> None:
    """A corrupt pickle of an exception falls back to rebuilding it from its type name."""
    info = ErrorInfo(
        module="builtins", qualname="KeyError", message="k", traceback="tb", pickled=b"junk"
    )
    rebuilt = _codec.decode_error(msgspec.msgpack.encode(info))
    assert type(rebuilt) is KeyError


def test_codec_unimportable_error_arrives_as_remote_error() -> None:
    """An exception type that cannot be imported here arrives as RemoteError, with its name,
    message and the remote traceback."""
    module = "actors_test_module_that_does_not_exist"
    assert module not in sys.modules
    info = ErrorInfo(
        module=module,
        qualname="GoneError",
        message="it went away",
        traceback="Traceback (most recent call last):\n  in the actor\nGoneError: it went away\n",
        pickled=None,
    )
    rebuilt = _codec.decode_error(msgspec.msgpack.encode(info))
    assert isinstance(rebuilt, actors.RemoteError)
    assert rebuilt.type_name == f"{module}.GoneError"
    assert rebuilt.message == "it went away"
    assert rebuilt.remote_traceback == info.traceback
    assert "GoneError: it went away" in str(rebuilt)


@pytest.mark.parametrize(
    ("error", "fields"),
    [
        (actors.ActorDiedError("gone", actor="a"), {"actor": "a"}),
        (actors.RejectedError("full", actor="b"), {"actor": "b"}),
        (actors.DeadlineExceededError("late"), {}),
        (actors.CallCancelledError("stopped"), {}),
        pytest.param(
            actors.MessageTooLargeError(200, 100),
            {"size": 200, "limit": 100},
        ),
        pytest.param(
            actors.RemoteError("mod.GoneError", "it went away", "tb"),
            {"type_name": "mod.GoneError", "message": "it went away"},
        ),
        pytest.param(
            actors.SupervisorGaveUpError("gave up", child="c", restarts=3, period_s=5.0),
            {"child": "c", "restarts": 3, "period_s": 5.0},
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
)
def test_codec_actor_errors_round_trip_with_their_fields(
    error: actors.ActorError, fields: dict[str, object]
) -> None:
    """The runtime's own errors (raised by an actor's downstream calls, say) cross the wire
    as themselves, with their structured fields."""
    rebuilt = _codec.decode_error(_codec.encode_error(error))
    assert type(rebuilt) is type(error)
    assert str(rebuilt) == str(error)
    for name, value in fields.items():
        assert getattr(rebuilt, name) == value


def test_codec_malformed_error_payload_becomes_protocol_error() -> None:
    """A malformed error payload fails its call with a ProtocolError instead of raising."""
    rebuilt = _codec.decode_error(b"\xc1")
    assert isinstance(rebuilt, actors.ProtocolError)


class CodedError(Exception):
    """Its constructor takes more than its ``args``: its own pickle does not round-trip."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class FieldError(Exception):
    def __init__(self, *, field: str) -> None:
        super().__init__(f"bad field {field!r}")
        self.field = field


def _raise_coded(code: int, message: str) -> None:
    raise CodedError(code, message)


def test_codec_error_with_other_constructor_arguments_keeps_type_and_attributes() -> None:
    """An exception whose constructor takes other arguments than its ``args`` arrives as
    itself (rebuilt from its ``args`` and attributes), with the remote traceback."""
    rebuilt = _codec.decode_error(_codec.encode_error(_caught(_raise_coded, 7, "coded")))
    assert type(rebuilt) is CodedError
    assert (rebuilt.code, rebuilt.args, str(rebuilt)) == (7, ("coded",), "coded")
    assert "_raise_coded" in rebuilt.remote_traceback  # type: ignore[attr-defined]

    keyword = _codec.decode_error(_codec.encode_error(FieldError(field="size")))
    assert type(keyword) is FieldError
    assert keyword.field == "size"
    assert str(keyword) == "bad field 'size'"


def test_codec_error_of_a_class_unknown_here_arrives_as_remote_error() -> None:
    """A pickled exception whose class cannot be unpickled here arrives as RemoteError."""
    info = _codec.error_info(_caught(_raise_coded, 3, "far away"))
    assert info.pickled is not None
    missing = "x" * len(CodedError.__module__)  # same length: the pickle stays well-formed
    assert missing not in sys.modules
    gone = ErrorInfo(
        module=missing,
        qualname="CodedError",
        message=info.message,
        traceback=info.traceback,
        pickled=info.pickled.replace(CodedError.__module__.encode(), missing.encode()),
    )
    with pytest.raises(ModuleNotFoundError):
        cloudpickle.loads(gone.pickled)
    rebuilt = _codec.decode_error(msgspec.msgpack.encode(gone))
    assert isinstance(rebuilt, actors.RemoteError)
    assert rebuilt.message == "far away"


def test_codec_dumps_keeps_the_file_name_of_code_shipped_by_value() -> None:
    """Functions shipped by value keep their file and line numbers (cloudpickle alone says
    ``<dynamic-code>``), so remote tracebacks name the user's source."""

    def local() -> int:  # defined in a function: cloudpickle ships it by value
        return 1

    shipped = _codec.decode_value(_codec.encode_value(local))
    assert shipped() == 1
    assert shipped.__code__.co_filename == __file__
    assert shipped.__code__.co_firstlineno == local.__code__.co_firstlineno

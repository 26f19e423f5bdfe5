"""The sans-IO HTTP/1.1 connection (``trioserve/_http/h1.py``), without sockets."""

from __future__ import annotations

import gc
import weakref

import pytest

from trioserve._http import h1


def _events(conn: h1.ServerConnection) -> list[object]:
    """Every event available now, up to ``NEED_DATA`` or ``PAUSED`` (included)."""
    out: list[object] = []
    while True:
        event = conn.next_event()
        out.append(event)
        if event is h1.NEED_DATA or event is h1.PAUSED or isinstance(event, h1.ConnectionClosed):
            return out


def _answer(conn: h1.ServerConnection, body: bytes = b"ok", **extra: str) -> bytes:
    headers = [("content-length", str(len(body))), *extra.items()]
    return b"".join(
        [
            conn.send(h1.Response(status_code=200, headers=headers, reason=b"OK")),
            conn.send(h1.Data(body)),
            conn.send(h1.EndOfMessage()),
        ]
    )


def test_request_head_and_body_arrive_in_pieces() -> None:
    conn = h1.ServerConnection()
    conn.receive_data(b"POST /a?x=1 HTTP/1.1\r\nHost: t\r\nX-Thing:  v  \r\nContent-Le")
    assert _events(conn) == [h1.NEED_DATA]
    conn.receive_data(b"ngth: 5\r\n\r\nab")
    request, data, need = _events(conn)
    assert isinstance(request, h1.Request)
    assert isinstance(data, h1.Data)
    assert (request.method, request.target, request.http_version) == (b"POST", b"/a?x=1", b"1.1")
    assert request.headers == [(b"host", b"t"), (b"x-thing", b"v"), (b"content-length", b"5")]
    assert data.data == b"ab"
    assert need is h1.NEED_DATA
    assert conn.their_state is h1.SEND_BODY
    assert conn.our_state is h1.SEND_RESPONSE
    conn.receive_data(b"cde")
    data, end, paused = _events(conn)
    assert isinstance(data, h1.Data)
    assert data.data == b"cde"
    assert isinstance(end, h1.EndOfMessage)
    assert paused is h1.PAUSED


def test_pipelined_requests_wait_their_turn() -> None:
    """Two requests in one read: the second is only seen after the first's answer and
    ``start_next_cycle``; meanwhile it counts as trailing data."""
    conn = h1.ServerConnection()
    conn.receive_data(b"GET /1 HTTP/1.1\r\nhost: t\r\n\r\nGET /2 HTTP/1.1\r\nhost: t\r\n\r\n")
    first, end, paused = _events(conn)
    assert isinstance(first, h1.Request)
    assert first.target == b"/1"
    assert isinstance(end, h1.EndOfMessage)
    assert paused is h1.PAUSED
    assert conn.trailing_data[0]  # the second request is buffered
    with pytest.raises(h1.LocalProtocolError):
        conn.start_next_cycle()  # not answered yet
    assert _answer(conn).startswith(b"HTTP/1.1 200 OK\r\n")
    assert conn.our_state is h1.DONE
    conn.start_next_cycle()
    second, _, _ = _events(conn)
    assert isinstance(second, h1.Request)
    assert second.target == b"/2"
    assert not conn.trailing_data[0]


def test_malformed_request_behind_a_good_one_is_reported_in_its_turn() -> None:
    conn = h1.ServerConnection()
    conn.receive_data(b"GET /1 HTTP/1.1\r\nhost: t\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
    assert isinstance(_events(conn)[0], h1.Request)
    _answer(conn)
    conn.start_next_cycle()
    with pytest.raises(h1.RemoteProtocolError) as caught:
        conn.next_event()
    assert caught.value.error_status_hint == 400
    # an error answer can still be sent, and closes the connection
    reply = conn.send(h1.Response(status_code=400, headers=[], reason=b"Bad Request"))
    assert b"connection: close" in reply


def test_an_http_2_preface_hints_505() -> None:
    conn = h1.ServerConnection()
    conn.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    with pytest.raises(h1.RemoteProtocolError) as caught:
        conn.next_event()
    assert caught.value.error_status_hint == 505


@pytest.mark.parametrize("version", [b"1.2", b"9.9"])
def test_other_versions_are_parsed_for_the_server_to_judge(version: bytes) -> None:
    """1.2 is served as 1.1 and 9.9 refused (505) by ``request_problem``, not the parser."""
    conn = h1.ServerConnection()
    conn.receive_data(b"GET / HTTP/%b\r\nhost: t\r\n\r\n" % version)
    request = conn.next_event()
    assert isinstance(request, h1.Request)
    assert request.http_version == version


def test_a_head_that_never_ends_is_refused_past_the_bound() -> None:
    conn = h1.ServerConnection(max_incomplete_event_size=1024)
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 2000)
    with pytest.raises(h1.RemoteProtocolError) as caught:
        conn.next_event()
    assert caught.value.error_status_hint == 431


def test_eof_between_requests_is_closed_and_mid_request_an_error() -> None:
    idle = h1.ServerConnection()
    idle.receive_data(b"")
    assert isinstance(idle.next_event(), h1.ConnectionClosed)
    cut = h1.ServerConnection()
    cut.receive_data(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 9\r\n\r\nab")
    assert isinstance(cut.next_event(), h1.Request)
    assert isinstance(cut.next_event(), h1.Data)
    cut.receive_data(b"")
    with pytest.raises(h1.RemoteProtocolError):
        cut.next_event()


def test_100_continue_expected_until_sent_or_body_starts() -> None:
    conn = h1.ServerConnection()
    conn.receive_data(
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nexpect: 100-Continue\r\n\r\n"
    )
    assert isinstance(conn.next_event(), h1.Request)
    assert conn.they_are_waiting_for_100_continue
    interim = h1.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
    assert conn.send(interim) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert not conn.they_are_waiting_for_100_continue
    assert conn.our_state is h1.SEND_RESPONSE  # the final answer is still to come


def test_chunked_answer_and_http_1_0_close_delimited() -> None:
    conn = h1.ServerConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    _events(conn)
    head = conn.send(
        h1.Response(status_code=200, headers=[("transfer-encoding", "chunked")], reason=b"OK")
    )
    assert b"transfer-encoding: chunked" in head
    assert conn.send(h1.Data(b"hello")) == b"5\r\nhello\r\n"
    assert conn.send(h1.Data(b"")) == b""  # an empty chunk would end the body
    assert conn.send(h1.EndOfMessage()) == b"0\r\n\r\n"
    assert conn.our_state is h1.DONE
    old = h1.ServerConnection()
    old.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    _events(old)
    head = old.send(
        h1.Response(status_code=200, headers=[("transfer-encoding", "chunked")], reason=b"OK")
    )
    assert b"transfer-encoding" not in head
    assert b"connection: close" in head
    assert old.send(h1.Data(b"hello")) == b"hello"
    old.send(h1.EndOfMessage())
    assert old.our_state is h1.MUST_CLOSE


def test_answers_http_forbids_are_local_errors() -> None:
    for headers in ([("x-evil", "a\r\nset-cookie: x")], [("bad name", "v")], [("x", "€")]):
        conn = h1.ServerConnection()
        conn.receive_data(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        _events(conn)
        with pytest.raises(h1.LocalProtocolError):
            conn.send(h1.Response(status_code=200, headers=headers, reason=b"OK"))
    conn = h1.ServerConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    _events(conn)
    conn.send(h1.Response(status_code=200, headers=[("content-length", "2")], reason=b"OK"))
    with pytest.raises(h1.LocalProtocolError):
        conn.send(h1.Data(b"too long"))
    with pytest.raises(h1.LocalProtocolError):
        conn.send(h1.EndOfMessage())  # nothing of the 2 bytes was sent


def test_head_answer_keeps_its_length_and_sends_no_body() -> None:
    conn = h1.ServerConnection()
    conn.receive_data(b"HEAD / HTTP/1.1\r\nhost: t\r\n\r\n")
    _events(conn)
    head = conn.send(h1.Response(status_code=200, headers=[("content-length", "9")], reason=b""))
    assert b"content-length: 9" in head
    assert conn.send(h1.EndOfMessage()) == b""
    conn.start_next_cycle()


def test_connection_close_request_ends_the_connection_after_its_answer() -> None:
    conn = h1.ServerConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
    _events(conn)
    assert b"connection: close" in _answer(conn)
    assert conn.our_state is h1.MUST_CLOSE


def test_upgrade_keeps_the_bytes_after_the_head() -> None:
    """After an upgrade request, what follows is not parsed: a 101 hands it over; a plain
    answer instead makes it HTTP again."""
    upgrade = b"GET /ws HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    conn = h1.ServerConnection()
    conn.receive_data(upgrade + b"\x81\x02hi")
    request, end, paused = _events(conn)
    assert isinstance(request, h1.Request)
    assert isinstance(end, h1.EndOfMessage)
    assert paused is h1.PAUSED
    conn.receive_data(b"more")
    switch = h1.InformationalResponse(
        status_code=101, headers=[("upgrade", "websocket")], reason=b"Switching Protocols"
    )
    assert conn.send(switch).startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert conn.trailing_data == (b"\x81\x02himore", False)
    refused = h1.ServerConnection()
    refused.receive_data(upgrade + b"GET /next HTTP/1.1\r\nhost: t\r\n\r\n")
    _events(refused)
    _answer(refused)
    refused.start_next_cycle()
    following = refused.next_event()
    assert isinstance(following, h1.Request)
    assert following.target == b"/next"


def test_a_released_connection_is_freed_by_reference_counting_alone() -> None:
    """The parser holds the connection's callbacks; once released, dropping the connection
    frees it at once, without waiting for a full garbage collection."""
    gc.disable()
    try:
        conn = h1.ServerConnection()
        conn.receive_data(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        assert isinstance(_events(conn)[0], h1.Request)
        _answer(conn)
        conn.release()
        conn.receive_data(b"GET /after HTTP/1.1\r\nhost: t\r\n\r\n")  # ignored
        gone = weakref.ref(conn)
        del conn
        assert gone() is None
    finally:
        gc.enable()

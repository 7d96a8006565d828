"""The guard in front of the scoring app: body limits, content types, and every error a short JSON answer."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

log = logging.getLogger(__name__)

MESSAGE_MAX = 200  # characters of an error message, at most
# A request's whole body must arrive within this: 1,100 half-sent bodies were held open for over 70 s.
BODY_SECONDS = 30.0
# A request's line and headers must arrive within this, counted from the connection or from the
# previous answer: 40 connections sending a header line a second were held for as long as they went on.
# A client's request line and headers are a few hundred bytes, sent at once; uvicorn closes an idle kept-alive connection at 5 s.
HEADER_SECONDS = 10.0
# Connections open at once, at most: each costs a file descriptor and memory, however slow its client.
MAX_CONNECTIONS = 512
LINGER_SECONDS = 1.0  # a refused connection is closed this long after its answer, at the latest

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BadRequest(Exception):
    """A request the server refuses: an HTTP status and a short message that quotes none of it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_body(status: int, message: str) -> bytes:
    """The JSON of an error answer: MLflow's {"error_code", "message"}, the message cut to MESSAGE_MAX."""
    try:
        code = HTTPStatus(status).name
    except ValueError:
        code = "ERROR"
    if len(message) > MESSAGE_MAX:
        message = message[: MESSAGE_MAX - 3] + "..."
    return json.dumps({"error_code": code, "message": message}).encode()


# A refusal is answered after this pause: it costs the server nothing (a timer, no thread), and a client
# that sends refusable requests in a loop sends few of them (benchmarks/serve_hostile.py measures it).
REFUSAL_PAUSE = 0.5


async def _send_error(send: Send, status: int, message: str) -> None:
    body = error_body(status, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Pure ASGI middleware: POST bodies must be JSON within max_body bytes; every error answer is short JSON.

    It reads a POST body itself, counting as it comes (a Content-Length over the limit is refused before
    any of it is read), and hands the app the whole body in one message.
    """

    def __init__(self, app: ASGIApp, max_body: int, body_seconds: float = BODY_SECONDS) -> None:
        self.app = app
        self.max_body = max_body
        self.body_seconds = body_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _ShortErrors(send)
        if scope["method"] == "POST":
            try:
                async with asyncio.timeout(self.body_seconds):  # a body sent half, then held open, is let go
                    body = await self._body(scope, receive)
            except TimeoutError:
                await _send_error(send, 408, f"the body did not arrive within {self.body_seconds:g} s")
                return
            except BadRequest as refused:
                await _send_error(send, refused.status, str(refused))
                return
            if body is None:
                return  # the client went away
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        headers = dict(scope["headers"])  # lower-case names (ASGI); a repeated header: its last value
        _check_content_type(headers.get(b"content-type"))
        limit = f"this server takes bodies of at most {self.max_body / 2**20:g} MiB (--max-body-mb)"
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            if _sends_regardless(scope, headers):
                await _discard(receive)
            raise BadRequest(413, f"the body is {int(declared)} bytes; {limit}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_body:  # a chunked body (no Content-Length): refused as soon as it passes
                if more and _sends_regardless(scope, headers):
                    await _discard(receive)
                raise BadRequest(413, f"the body passed {self.max_body} bytes; {limit}")
            chunks.append(chunk)
            if not more:
                return b"".join(chunks)


def _sends_regardless(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    """Whether the client sends its whole body before it reads an answer, on a connection it closes after.

    Such a client (urllib, HTTP/1.0) reads an early 413 only if the rest of its body is read first: uvicorn
    closes the connection after the answer, under a client still sending (a broken pipe, not a 413). With
    keep-alive, uvicorn itself discards the rest after an early answer; with `Expect: 100-continue` the
    client waits for our go-ahead before sending, and an early 413 means the body is never sent at all.
    """
    if b"100-continue" in headers.get(b"expect", b"").lower():
        return False
    connection = headers.get(b"connection", b"").lower()
    return b"close" in connection or (scope.get("http_version") == "1.0" and b"keep-alive" not in connection)


async def _discard(receive: Receive) -> None:
    """Read the rest of a refused body, keeping none of it."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


# Read as JSON too, as TensorFlow Serving reads them: no Content-Type (the original project's client,
# `requests.post(url, data=json.dumps(...))`) and curl's default for `-d` (and urllib's for a body).
UNDECLARED = ("", "application/x-www-form-urlencoded")


def _check_content_type(value: bytes | None) -> None:
    """415 for a body declared as something other than JSON, or JSON in another charset than UTF-8."""
    media, *parameters = (value or b"").decode("latin-1").split(";")
    if media.strip().lower() in UNDECLARED:
        return
    if media.strip().lower() != "application/json":
        raise BadRequest(415, "Content-Type must be application/json")
    for parameter in parameters:
        name, _, charset = parameter.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise BadRequest(415, "Content-Type application/json must be UTF-8 (charset=utf-8 or none)")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body read already, then whatever the connection says next."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


class _ShortErrors:
    """A send that holds an error answer (status >= 400) and lets it out only as short JSON, after
    REFUSAL_PAUSE (but a 408, which has waited for its body already).

    The app's own refusals pass as they are; anything else (Starlette's plain-text 404, 405 or 500)
    becomes {"error_code", "message": the status's phrase}.
    """

    KEEP = 2 * MESSAGE_MAX + 100  # bytes of an error answer worth looking at

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.body = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        if len(self.body) <= self.KEEP:
            self.body += message.get("body", b"")
        if message.get("more_body", False):
            return
        status = self.start["status"]
        body = self.body if _is_short_error(self.body) else error_body(status, _phrase(status))
        headers = [
            (k, v) for k, v in self.start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await asyncio.sleep(0 if status == 408 else REFUSAL_PAUSE)
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _is_short_error(body: bytes) -> bool:
    if len(body) > _ShortErrors.KEEP:
        return False
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    message = answer.get("message") if isinstance(answer, dict) else None
    return isinstance(message, str) and 0 < len(message) <= MESSAGE_MAX


def _raw_answer(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer with the short JSON of an error, closing the connection: for what the
    protocol answers itself, before (or instead of) any request the app sees."""
    body = error_body(status, message)
    status_lines = f"HTTP/1.1 {status} {_phrase(status)}\r\ncontent-type: application/json\r\n".encode()
    return status_lines + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body


def json_protocol(header_seconds: float = HEADER_SECONDS, max_connections: int = MAX_CONNECTIONS) -> type:
    """uvicorn's own HTTP protocol, with what it lacks: a request's line and headers must arrive within header_seconds
    (else 408, or a silent close if nothing came), at most max_connections are open at once (a new one past
    them is answered 503), and what uvicorn cannot parse (a Content-Length of 30 digits, a request line of
    noise) gets the same short JSON as every other refusal, not its plain text.

    uvicorn's keep-alive timeout ends when a byte arrives, so a client sending its headers a line a second held
    its connection for as long as it went on; and its limit_concurrency counts connections only once a
    request's headers are read, answering in plain text.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class JsonRefusals(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        headers_timer: asyncio.TimerHandle | None = None
        headers_started = False  # bytes of the next request's line or headers have arrived
        refused = False  # answered already: what the client still sends is read and dropped

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.server_state.connections) > max_connections:
                log.warning("refused a connection: %d are open, the most this server holds", max_connections)
                self._refuse(503, f"this server holds at most {max_connections} connections: try again in a moment")
                return
            self._await_headers()

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return
            self.headers_started = self.headers_started or self._between_requests()
            super().data_received(data)

        def on_response_complete(self) -> None:
            self.headers_started = False
            super().on_response_complete()
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.headers_timer is not None:
                self.headers_timer.cancel()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _await_headers(self) -> None:
            if self.headers_timer is not None:
                self.headers_timer.cancel()
            if not self.transport.is_closing():
                self.headers_timer = self.loop.call_later(header_seconds, self._headers_late)

        def _headers_late(self) -> None:
            if self.transport.is_closing() or not self._between_requests():
                return  # a request's headers arrived in time: the guard times its body
            if self.headers_started:
                self._refuse(408, f"the request's line and headers did not arrive within {header_seconds:g} s")
            else:
                self.transport.close()  # nothing sent: closed as uvicorn closes an idle kept-alive connection

        def _refuse(self, status: int, message: str) -> None:
            """Answer now and close; the client's bytes meanwhile are read and dropped: a socket closed with
            unread bytes resets the connection, and the client would read a reset instead of the answer."""
            self.refused = True
            self.transport.write(_raw_answer(status, message))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)  # or at once, when the client closes

        def send_400_response(self, msg: str) -> None:
            answer = _raw_answer(400, f"not an HTTP request this server reads ({msg.rstrip('.')})")
            self.transport.pause_reading()  # nothing more is read from it meanwhile
            self.loop.call_later(REFUSAL_PAUSE, self._answer, answer)

        def _answer(self, answer: bytes) -> None:
            if not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

    return JsonRefusals

"""What keeps a few slow, idle or greedy clients from taking the service from everyone else.

* The request head must arrive within `serve.head_timeout_s` of the connection opening (or
  of its previous answer): `head_deadline_protocol`, uvicorn's HTTP/1.1 protocol with a
  timer, closes a connection that sends nothing, so an idle socket costs a file descriptor
  for seconds and never a place in the queue.
* The body must arrive within `serve.body_timeout_s` of the head (408 otherwise), and may
  hold `serve.limits.max_json_kb` for a JSON request (they carry a few numbers) or the
  photos' limit for a multipart one: checked from Content-Length before it is read, else
  while it streams in (413), so nothing oversized is ever parsed.
* At most `serve.max_requests` requests are in progress at once; more are answered 503 at
  once. Requests are counted, not sockets, and `/health` is neither counted nor refused: it
  answers ahead of the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from omegaconf import DictConfig
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from face_generation.serving.uploads import KB, MB

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNQUEUED = ("/health",)  # answered whatever else is in progress
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose next request head has not arrived
    `head_timeout` seconds after the connection opened or its last answer was sent."""

    head_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # asyncio sets TCP_NODELAY only on sockets made with proto=IPPROTO_TCP, which those
        # accepted from socket.create_server's listener are not: without it each answer's
        # body waits for the client's delayed ACK of its head (40 ms on Linux)
        connection = transport.get_extra_info("socket")
        if connection is not None and connection.family in (socket.AF_INET, socket.AF_INET6):
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.waiting_cycle = self.cycle
        self.deadline: asyncio.TimerHandle | None = None
        self.arm()

    def arm(self) -> None:
        self.disarm()
        self.deadline = self.loop.call_later(self.head_timeout, self.time_out)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def time_out(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(TIMED_OUT)
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self.waiting_cycle:  # a whole request head arrived
            self.waiting_cycle = self.cycle
            self.disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.arm()  # the next request on this keep-alive connection has its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)


def head_deadline_protocol(seconds: float) -> type[HeadDeadline]:
    """`HeadDeadline` with a deadline of `seconds`, for uvicorn's `http=` setting."""
    return type("HeadDeadline", (HeadDeadline,), {"head_timeout": float(seconds)})


def server_config(app: Any, serve: DictConfig, **settings: Any) -> uvicorn.Config:
    """The uvicorn settings of `serve`: the head deadline, and no connection cap (uvicorn's
    `limit_concurrency` counts sockets, so idle ones would refuse everyone: RequestGuard
    counts requests instead)."""
    return uvicorn.Config(
        app,
        http=head_deadline_protocol(float(serve.head_timeout_s)),
        log_level=str(serve.log_level),
        access_log=bool(serve.access_log),
        limit_concurrency=None,
        **settings,
    )


class Refused(Exception):
    """Raised into the app when its body read breaks a rule; the guard answers instead."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class RequestGuard:
    """ASGI middleware: the request cap, the body deadline and the body limits (module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_requests: int,
        body_timeout: float,
        max_json_bytes: int,
        max_multipart_bytes: int,
    ) -> None:
        self.app, self.max_requests, self.body_timeout = app, max_requests, body_timeout
        self.max_json_bytes, self.max_multipart_bytes = max_json_bytes, max_multipart_bytes
        self.in_progress = 0  # the event loop is one thread: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNQUEUED:
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.max_requests:
            reason = f"busy: {self.in_progress} requests in progress; retry in a moment"
            await answer(scope, receive, send, Refused(503, reason), {"Retry-After": "1"})
            return
        self.in_progress += 1
        try:
            await self.guarded(scope, receive, send)
        finally:
            self.in_progress -= 1

    def body_limit(self, scope: Scope) -> tuple[int, str]:
        """(the byte limit of this request's body, how a refusal words it)."""
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        if content_type.startswith(b"multipart/form-data"):
            limit = self.max_multipart_bytes
            return limit, f"the request is larger than the limit of {limit / MB:.3g} MB"
        limit = self.max_json_bytes
        return limit, f"the JSON request is larger than the limit of {limit / KB:g} kB"

    async def guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit, reason = self.body_limit(scope)
        too_large = Refused(413, reason)
        closing = {"Connection": "close"}  # the rest of the body is never read
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            await answer(scope, receive, send, too_large, closing)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        received, body_done, started = 0, False, False
        failure: Refused | None = None

        async def guarded_receive() -> Message:
            nonlocal received, body_done, failure
            if body_done:  # later reads wait for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                failure = Refused(
                    408, f"the request body did not arrive within {self.body_timeout:g} s"
                )
                raise failure from None
            received += len(message.get("body", b""))
            body_done = not message.get("more_body", False)
            if received > limit:
                failure = too_large
                raise failure
            return message

        async def send_unless_refused(message: Message) -> None:
            nonlocal started
            if failure is not None:  # the app's answer to the aborted read is replaced
                return
            started = True
            await send(message)

        with contextlib.suppress(Refused):  # raised into the app by guarded_receive
            await self.app(scope, guarded_receive, send_unless_refused)
        if failure is not None and not started:
            await answer(scope, receive, send, failure, closing)


async def answer(
    scope: Scope,
    receive: Receive,
    send: Send,
    refusal: Refused,
    headers: dict[str, str] | None = None,
) -> None:
    """The refusal as the service's every refusal reads: JSON {"detail": one line}."""
    response = JSONResponse({"detail": refusal.reason}, refusal.status, headers=headers)
    await response(scope, receive, send)

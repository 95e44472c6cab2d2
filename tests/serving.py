"""Servers for the server tests: an app run by uvicorn on loopback, and a recording upstream."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def uvicorn_config(app, **config):
    """The settings ``draftwise serve`` runs with (header deadline, connection limit), where the
    checkout has them (benchmarks/attacks.py also runs this against older checkouts)."""
    import uvicorn

    try:
        from draftwise.serve.http import server_config
    except ImportError:  # pragma: no cover
        config.pop("header_timeout", None)
        return uvicorn.Config(app, **config)
    return server_config(app, **config)


@contextmanager
def running(app, **config) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread on a free loopback port; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = {"log_level": "warning", "timeout_graceful_shutdown": 2, **config}
    server = uvicorn.Server(uvicorn_config(app, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server died while starting"
        assert time.monotonic() < deadline, "the server did not start within 30 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


UPSTREAM_MODEL = "tiny"
SECRET = "/srv/secret/internal/path"  # in the recording upstream's error text; must not reach clients


class Recorder:
    """A raw ASGI upstream that records what reaches it (path and Authorization) and misbehaves on
    request, by its path's first segment:

    - ``/v1/...``: answers like an OpenAI server (a short completion; ``/v1/models`` lists
      ``tiny`` and ``org/tiny-2``);
    - ``/nan/v1/...``: JSON with ``NaN``; ``/gzip/v1/...``: a gzip-compressed event stream;
    - ``/slow/v1/...``: waits up to 3 s and counts, in ``cancelled``, the requests whose client (the
      front) went away meanwhile; ``/fail/v1/...``: a 500 with an internal message.
    """

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.cancelled = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.seen.append({"path": path, "authorization": headers.get("authorization")})
        while (await receive()).get("more_body"):
            pass
        if path.startswith("/slow"):
            try:
                await asyncio.wait_for(receive(), 3)  # http.disconnect, when the front cancels
                self.cancelled += 1
                return
            except asyncio.TimeoutError:
                pass
        status, content_type, extra = 200, b"application/json", []
        if path.endswith("/models"):
            cards = [{"id": i, "object": "model", "owned_by": "x"} for i in (UPSTREAM_MODEL, "org/tiny-2")]
            payload = json.dumps({"object": "list", "data": cards}).encode()
        elif path.startswith("/nan"):
            payload = b'{"choices": [{"text": "x", "index": 0}], "usage": {"prompt_tokens": NaN}}'
        elif path.startswith("/gzip"):
            content_type, extra = b"text/event-stream", [(b"content-encoding", b"gzip")]
            payload = gzip.compress(b'data: {"choices": [{"text": "hi", "index": 0}]}\n\ndata: [DONE]\n\n')
        elif path.startswith("/fail"):
            status = 500
            payload = json.dumps({"error": {"message": f"CUDA out of memory at {SECRET}"}}).encode()
        else:
            payload = json.dumps(
                {"id": "x", "object": "text_completion", "created": 0, "model": UPSTREAM_MODEL,
                 "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            ).encode()  # fmt: skip
        start = {"type": "http.response.start", "status": status}
        await send({**start, "headers": [(b"content-type", content_type), *extra]})
        await send({"type": "http.response.body", "body": payload})

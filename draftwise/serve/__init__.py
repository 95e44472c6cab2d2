"""``draftwise serve``: an OpenAI-compatible HTTP server for one target (and draft) model.

``create_app(target, draft, tokenizer, model_name=...)`` builds the FastAPI app; ``serve(args)`` loads the
models and runs it with uvicorn. Requests may pick the method with an extra ``"draftwise"`` field::

    {"model": "...", "messages": [...], "draftwise": {"method": "speckv", "budget": 256}}

Importing this package is cheap: FastAPI is imported only when ``create_app`` is first used.
"""

from __future__ import annotations

from typing import Any

from draftwise.serve.main import add_serve_arguments, serve

__all__ = ["add_serve_arguments", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from draftwise.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The ``serve`` command: its arguments, and loading the models and running uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from draftwise.models import load_model
from draftwise.options import MethodOptions, ModelOptions, SpeculativeOptions, add_arguments, from_args
from draftwise.serve.settings import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_LIMIT_CONCURRENCY,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_FORWARDED,
    DEFAULT_MAX_NEW_TOKENS_LIMIT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_UPSTREAM_TIMEOUT,
    ServerSettings,
)

log = logging.getLogger("draftwise.serve")


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``serve`` options to ``parser`` (a sub-command's parser) and set ``func=serve``."""
    add_arguments(parser, ModelOptions, help={"draft": "as --target; 'none' for no draft"})
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", help="the name clients pass as `model` (default: --target)")
    add_arguments(
        parser,
        MethodOptions,
        defaults={"method": None},
        help={"method": "for requests that name none: speckv; specpc with --upstream (specpc or full)"},
    )
    add_arguments(parser, SpeculativeOptions)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="for requests without max_tokens")
    parser.add_argument(
        "--max-new-tokens-limit", type=int, default=DEFAULT_MAX_NEW_TOKENS_LIMIT,
        help="the most max_tokens a request may ask for",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=0.0, help="for requests without one (0: greedy)")
    parser.add_argument("--top-p", type=float, default=1.0, help="for requests without one")
    parser.add_argument(
        "--max-batch", type=int, default=DEFAULT_MAX_BATCH,
        help="requests decoding together (continuous batching); more wait in the queue",
    )  # fmt: skip
    parser.add_argument(
        "--kv-cache-memory", type=float, metavar="MIB",
        help="KV cache the running batch may hold: a request reserves what its method keeps plus "
        "max_tokens, and waits for room (default: no limit but --max-batch)",
    )  # fmt: skip
    parser.add_argument(
        "--max-concurrency", type=int, default=DEFAULT_MAX_CONCURRENCY,
        help="upstream mode: compressions run at once",
    )  # fmt: skip
    parser.add_argument(
        "--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="requests waiting; beyond: 429"
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("DRAFTWISE_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $DRAFTWISE_API_KEY; none if unset)",
    )  # fmt: skip
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument(
        "--max-request-memory", type=float, metavar="MIB",
        help="refuse (400) requests whose KV cache and scoring weights before anything is dropped "
        "(prompt + max_tokens or lookahead; upstream mode: the draft's) exceed this",
    )  # fmt: skip
    parser.add_argument(
        "--limit-concurrency", type=int, default=DEFAULT_LIMIT_CONCURRENCY,
        help="open connections and requests at once; beyond them the server answers 503",
    )  # fmt: skip
    parser.add_argument(
        "--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT, metavar="SECONDS",
        help="close a connection whose request headers have not arrived in this time",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.add_argument(
        "--upstream", metavar="URL",
        help="upstream mode: load only --draft, compress prompts with SpecPC and forward the requests "
        "to this OpenAI-compatible server (e.g. http://127.0.0.1:8001/v1)",
    )  # fmt: skip
    parser.add_argument("--upstream-model", help="upstream mode: the `model` to send (default: the client's)")
    parser.add_argument(
        "--upstream-api-key", default=os.environ.get("DRAFTWISE_UPSTREAM_API_KEY"),
        help="upstream mode: key sent upstream (default: $DRAFTWISE_UPSTREAM_API_KEY; else none)",
    )  # fmt: skip
    parser.add_argument(
        "--upstream-timeout", type=float, default=DEFAULT_UPSTREAM_TIMEOUT,
        help="upstream mode: seconds to wait for the upstream server",
    )  # fmt: skip
    parser.add_argument(
        "--max-forwarded", type=int, default=DEFAULT_MAX_FORWARDED,
        help="upstream mode: requests in flight to the upstream at once; beyond them, 429",
    )  # fmt: skip
    parser.set_defaults(func=serve)
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    """Load the models named by ``args`` and serve them until interrupted."""
    # The web stack (FastAPI, uvicorn, pydantic) loads only when serving, not for every command.
    import uvicorn

    from draftwise.serve.app import create_app
    from draftwise.serve.http import server_config
    from draftwise.serve.jobs import Defaults

    settings = server_settings(args)
    Defaults.parse(settings.defaults)  # bad options fail now, not after loading the models
    models = from_args(ModelOptions, args)

    def run(app) -> int:
        config = server_config(
            app, host=args.host, port=args.port, log_level=args.log_level,
            limit_concurrency=args.limit_concurrency, header_timeout=args.header_timeout,
        )  # fmt: skip
        uvicorn.Server(config).run()
        return 0

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    if not args.api_key and not _is_loopback(args.host):
        log.warning("listening on %s without an API key: anyone who can reach it can use it", args.host)
    draft = tokenizer = None
    if settings.upstream:
        if models.draft_name is None:
            raise ValueError("--upstream needs a --draft model to compress prompts with")
        draft, tokenizer = load_model(models.draft_name, dtype=models.dtype, device=models.device)
        return run(create_app(None, draft, tokenizer, settings))
    target, tokenizer = load_model(models.target, dtype=models.dtype, device=models.device)
    if models.draft_name is not None:
        draft, _ = load_model(models.draft_name, dtype=models.dtype, device=models.device)
    return run(create_app(target, draft, tokenizer, settings))


def _mib(value: float | None) -> int | None:
    """Bytes of ``value`` MiB (a command-line size), ``None`` kept."""
    return None if value is None else int(value * 2**20)


def server_settings(args: argparse.Namespace) -> ServerSettings:
    """The :class:`ServerSettings` that the ``serve`` arguments ask for."""
    defaults = {
        "method": args.method or ("specpc" if args.upstream else "speckv"),
        **from_args(MethodOptions, args).options(),
        "max_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
    }
    return ServerSettings(
        model_name=args.model_name or args.target,
        defaults=defaults,
        max_batch=args.max_batch,
        kv_cache_memory=_mib(args.kv_cache_memory),
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        api_key=args.api_key,
        max_body_bytes=args.max_body_bytes,
        max_new_tokens_limit=args.max_new_tokens_limit,
        max_request_bytes=_mib(args.max_request_memory),
        upstream=args.upstream,
        upstream_model=args.upstream_model,
        upstream_api_key=args.upstream_api_key,
        upstream_timeout=args.upstream_timeout,
        max_forwarded=args.max_forwarded,
        speculative=from_args(SpeculativeOptions, args).build(),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m draftwise.serve``, until ``draftwise serve`` is wired into the CLI."""
    parser = add_serve_arguments(argparse.ArgumentParser(prog="draftwise serve", description=__doc__))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as error:
        print(f"draftwise serve: error: {error}", file=sys.stderr)
        return 2

"""The server's default limits (no heavy imports, so the CLI can show them cheaply)."""

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_NEW_TOKENS_LIMIT = 4096
DEFAULT_MAX_CONCURRENCY = 1
DEFAULT_MAX_QUEUE = 8
RETRY_AFTER_SECONDS = 1
DEFAULT_UPSTREAM_TIMEOUT = 600.0  # seconds, upstream mode
DEFAULT_MAX_FORWARDED = 64  # upstream mode: requests in flight to the upstream at once
DEFAULT_BODY_TIMEOUT = 60.0  # seconds for a request body to arrive
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds for a connection's request headers to arrive
DEFAULT_LIMIT_CONCURRENCY = 256  # open connections and requests; beyond them uvicorn answers 503

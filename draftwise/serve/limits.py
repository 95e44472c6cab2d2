"""The server's default limits (no heavy imports, so the CLI can show them cheaply)."""

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_NEW_TOKENS_LIMIT = 4096
DEFAULT_MAX_CONCURRENCY = 1
DEFAULT_MAX_QUEUE = 8
RETRY_AFTER_SECONDS = 1
DEFAULT_UPSTREAM_TIMEOUT = 600.0  # seconds, upstream mode

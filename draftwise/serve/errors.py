"""Errors as OpenAI-style JSON bodies: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from draftwise.serve.admission import Busy
from draftwise.serve.settings import RETRY_AFTER_SECONDS

log = logging.getLogger("draftwise.serve")


class APIError(Exception):
    """An error the client should see, with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def response(self) -> JSONResponse:
        return error_response(
            self.status, self.message, type=self.type, param=self.param, code=self.code, headers=self.headers
        )

    def body(self) -> dict:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, type=type, param=param, code=code), status, headers=headers)


def model_not_found(name: str, served: str | None = None) -> APIError:
    serves = f"; this server serves {served!r}" if served else ""
    return APIError(404, f"the model {name!r} does not exist{serves}", param="model", code="model_not_found")


def _validation_error(errors: list[dict]) -> APIError:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", first.get("msg", ""))
        return APIError(400, f"the request body is not valid JSON: {detail}", code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return APIError(400, message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, FastAPI's own included, in OpenAI's format; bad input is a 400, never a 500."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(Busy)
    async def _busy(request: Request, error: Busy) -> JSONResponse:
        return error_response(
            429, f"the server is busy ({error}); retry later", type="rate_limit_error",
            code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _validation_error(list(error.errors())).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            500, f"internal server error ({type(error).__name__})", type="server_error", code="internal_error"
        )

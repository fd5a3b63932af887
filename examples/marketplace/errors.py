"""Errors as JSON ``{"detail": ...}`` with the right status, documented in the OpenAPI schema.

Bad input is a 4xx, never a 500: pydantic's validation errors and bodies that are not UTF-8
text (422), ormtune's repository errors (404, 409, 422 for a tampered cursor), SQLAlchemy's
optimistic-concurrency failure (409). A database that is down or too busy to answer is a 503.
"""

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ormtune.exceptions import DuplicateKeyError, ForeignKeyError, InvalidCursorError, NotFoundError

__all__ = ["ErrorOut", "ErrorResponse", "add_error_handlers", "responses"]


class ErrorOut(BaseModel):
    """An error: ``detail`` says what went wrong (for a 422 from validation, pydantic's list of
    errors)."""

    detail: str | list[dict[str, Any]]


_DEFAULT = {
    401: "not authenticated: no token, a bad one, or an expired one",
    403: "not allowed for this user",
    404: "no such object",
    409: "conflicts with the current state",
    422: "invalid input",
}


def responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for these error codes (``_404="no such job"`` overrides a
    description); every route documents 401 and 422 as well."""
    wanted = sorted({401, 422, *codes, *(int(k[1:]) for k in descriptions)})
    return {
        code: {"model": ErrorOut, "description": descriptions.get(f"_{code}", _DEFAULT[code])}
        for code in wanted
    }


class ErrorResponse(JSONResponse):
    """JSON with non-ASCII characters escaped: an error may echo input, and input may hold
    characters UTF-8 cannot encode (an unpaired surrogate sent as ``"\\ud800"``)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _error(status: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return ErrorResponse({"detail": detail}, status_code=status, headers=headers)


async def _invalid_input(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _error(422, jsonable_encoder(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's 400 for a body that is not UTF-8 text: invalid input, like bad JSON (422)
        detail = [{"type": "json_invalid", "loc": ["body"], "msg": "the body is not UTF-8 text"}]
        return _error(422, detail)
    return await http_exception_handler(request, exc)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return _error(404, str(exc))


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DuplicateKeyError):
        return _error(409, "that already exists")
    return _error(409, "that conflicts with existing data")


async def _invalid_cursor(_: Request, _exc: Exception) -> JSONResponse:
    return _error(422, "not a valid pagination cursor: start again without one")


async def _changed_meanwhile(_: Request, _exc: Exception) -> JSONResponse:
    return _error(409, "changed by another request meanwhile: read it again")


async def _bad_value(_: Request, _exc: Exception) -> JSONResponse:
    # the database rejected a value the validation let through
    return _error(422, "a value is out of range for the database")


async def _unavailable(_: Request, _exc: Exception) -> JSONResponse:
    return _error(503, "the database is unavailable or busy: retry", {"Retry-After": "1"})


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_input)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(DuplicateKeyError, _conflict)
    app.add_exception_handler(ForeignKeyError, _conflict)
    app.add_exception_handler(InvalidCursorError, _invalid_cursor)
    app.add_exception_handler(StaleDataError, _changed_meanwhile)
    app.add_exception_handler(DataError, _bad_value)
    app.add_exception_handler(OperationalError, _unavailable)
    app.add_exception_handler(PoolTimeoutError, _unavailable)

"""HTTP errors as OpenAI's API returns them: ``{"error": {"message", "type", "param", "code"}}``.

Every error a client causes is one of these (4xx); :func:`as_http` turns the runtime's typed
errors (an image that is not one, a prompt too long, a value out of range) into a 400 with the
runtime's own message, so the server never answers 500 to client input."""

from __future__ import annotations

from edgevfm.runtime.errors import EdgeVfmError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         413: "request_too_large", 503: "overloaded_error", 504: "timeout_error"}


class HttpError(Exception):
    """A response with ``status`` and OpenAI's error body; ``headers`` (Retry-After) go with it."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.status}}


def as_http(job):
    """``job()``, with a runtime error (raised by the request's own values: an image that is not
    one, a prompt too long, a value out of range) as a 400 with the runtime's message."""
    try:
        return job()
    except EdgeVfmError as exc:
        raise HttpError(400, str(exc)) from None

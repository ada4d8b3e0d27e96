"""The admin API's guard: ``Authorization: Bearer <server.admin_token>``; the admin API is off (403) without one."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

if TYPE_CHECKING:
    from router.runtime import Runtime


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    runtime: Runtime = connection.app.state.runtime
    secret = runtime.routing.config.server.admin_token
    token = secret.get_secret_value() if secret is not None else ""
    if not token:
        raise PermissionDeniedException("admin API disabled: set server.admin_token")
    scheme, _, given = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise NotAuthorizedException("a valid 'Authorization: Bearer <admin token>' header is required")

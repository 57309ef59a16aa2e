"""Who may use the HTTP API, and what it may open: loopback rules, the token, sources over the API.

Apart from the server and its routes (`vap_video.pipeline.api`) so the rules read in one place and the
cluster's shard server applies the same ones.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from typing import Any
from urllib.parse import unquote

from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.settings import ServerConfig

MIN_TOKEN_LEN = 16
SESSION_COOKIE = "vap_session"
WILDCARD = {"", "0.0.0.0", "::", "[::]"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    """True for names that only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    h = host.strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a DNS name: assume reachable from elsewhere


def host_name(host: str) -> str:
    """The name part of a Host header: `[::1]:9108` -> `::1`, `cam.local:9108` -> `cam.local`."""
    h = host.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.split(":", 1)[0] if h.count(":") == 1 else h


def session_value(token: str) -> str:
    """The console's cookie: derived from the token, so a leaked cookie is not the token itself."""
    return hmac.new(token.encode(), b"vap-console-session", hashlib.sha256).hexdigest()


def read_token(cfg: ServerConfig) -> str | None:
    """The API token from `cfg.token_env`; ConfigError when it is set but too short to be one."""
    token = os.environ.get(cfg.token_env) or None
    if token is not None and len(token) < MIN_TOKEN_LEN:
        raise ConfigError(f"server: ${cfg.token_env} is set but only {len(token)} characters long; use at least "
                          f"{MIN_TOKEN_LEN}, e.g. export {cfg.token_env}=$(openssl rand -hex 32)")
    return token


class ApiError(Exception):
    """A request refused with a status and a reason for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def check_api_source(url: Any, cfg: ServerConfig) -> None:
    """Refuse a source that POST /streams may not open, before anything touches the file system.

    Why here and textually: validating the stream (`source_kind`) looks at whether a path exists,
    which would tell a client whether `/etc/shadow` is there. Outside the media roots every path
    gets the same answer, existing or not.
    """
    if not isinstance(url, str):
        return  # validation names the problem
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    scheme = m.group(1).lower() if m else None
    allowed = list(cfg.allowed_schemes)
    if scheme is None and url.startswith("/dev/video"):
        scheme = "v4l2"
    if scheme not in (None, "file"):
        if scheme not in allowed:
            raise ApiError(403, f"url: the {scheme}:// scheme is not accepted over the API (server.allowed_schemes: "
                                f"{', '.join(allowed) or 'none'}); add it there, or list the stream in the YAML")
        return
    path = unquote(url[len("file://"):]) if scheme == "file" else url
    refusal = ApiError(403, "url: a file can be added over the API only from under server.media_roots "
                            f"(now: {', '.join(str(r) for r in cfg.media_roots) or 'none'}); add its folder there, "
                            "or list the stream in the YAML")
    if not cfg.media_roots or not os.path.isabs(path) or "\x00" in path:
        raise refusal
    real = os.path.realpath(path)
    for root in cfg.media_roots:
        base = os.path.realpath(root)
        if os.path.commonpath([base, real]) == base:
            return
    raise refusal

"""Why a stream could not be opened or read: `SourceError` and the classification of PyAV/OS errors.

Kept apart from the sources themselves because the supervisor and the preflight checks branch on
these kinds too, and the table of FFmpeg exceptions is long. Every message is operator-facing and
credential-free (the URL is redacted; FFmpeg's own text, which embeds it, is never passed on).
`vap_video.pipeline.sources` re-exports everything here.
"""

from __future__ import annotations

import errno as errno_mod
import socket
from urllib.parse import urlsplit

from vap_video.pipeline.config import redact_url

SOURCE_ERROR_KINDS = ("unreachable", "unauthorized", "forbidden", "not_found", "timeout", "corrupt",
                      "unsupported", "eof", "decoder", "http", "io", "error")


class SourceError(Exception):
    """A stream could not be opened or read. `str(err)` is safe to show to operators.

    `kind` is one of SOURCE_ERROR_KINDS, so callers can branch on the class of failure without
    parsing text; the message already names the (redacted) URL, the problem and what to check.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def classify_error(exc: BaseException, url: str, phase: str = "read", timeout_s: float | None = None) -> SourceError:
    """Turn a PyAV/OS exception into a SourceError with an operator-facing message.

    FFmpeg's own messages embed the full URL (with `user:pass@`), so the text is rebuilt here from
    the exception type and `strerror` and prefixed with the redacted URL; nothing from `str(exc)`
    reaches the message unredacted.
    """
    import av

    if isinstance(exc, SourceError):
        return exc
    where = redact_url(url)
    strerror = getattr(exc, "strerror", None) or ""

    def err(kind: str, text: str) -> SourceError:
        return SourceError(kind, f"{where}: {text}")

    if isinstance(exc, av.error.HTTPUnauthorizedError):
        return err("unauthorized", "unauthorized (401): check the user and password")
    if isinstance(exc, av.error.HTTPForbiddenError):
        return err("forbidden", "forbidden (403): this user may not access this path")
    if isinstance(exc, av.error.HTTPNotFoundError):
        return err("not_found", "not found (404): check the path of the stream")
    if isinstance(exc, (av.error.HTTPClientError, av.error.HTTPServerError, av.error.HTTPError)):
        return err("http", f"server answered with an error ({strerror or type(exc).__name__})")
    if isinstance(exc, ConnectionRefusedError):
        return err("unreachable", "unreachable: connection refused (is the camera/server running, "
                                  "is the port right?)")
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return err("unreachable", f"connection lost ({strerror or type(exc).__name__})")
    if isinstance(exc, (av.error.ExitError, TimeoutError)):
        limit = f" within {timeout_s:g}s" if timeout_s else ""
        if phase == "open":
            return err("timeout", f"timeout: could not open the stream{limit} (host down, firewalled, "
                                  f"or the server is not answering)")
        return err("timeout", f"timeout: no data{limit} (the stream stopped sending)")
    if isinstance(exc, FileNotFoundError):
        return err("not_found", "not found: no such file or device")
    if isinstance(exc, PermissionError):
        return err("forbidden", "permission denied: check the file/device permissions")
    if isinstance(exc, IsADirectoryError):
        return err("unsupported", "is a directory, not a video file")
    if isinstance(exc, (av.error.DecoderNotFoundError, av.error.DemuxerNotFoundError,
                        av.error.ProtocolNotFoundError, av.error.PatchWelcomeError)):
        if phase == "open" and isinstance(exc, av.error.DecoderNotFoundError):
            return err("unsupported", "no decoder for this video (a codec this FFmpeg build lacks, "
                                      "or a damaged header)")
        return err("unsupported", f"unsupported by this FFmpeg build ({strerror or type(exc).__name__})")
    if isinstance(exc, av.error.InvalidDataError):
        if phase == "open":
            return err("unsupported", "not a video FFmpeg can read (unknown format or damaged header)")
        return err("corrupt", "corrupt data in the stream")
    if isinstance(exc, (EOFError, av.error.EOFError)):
        return err("eof", "stream ended")
    if isinstance(exc, OSError):
        code = getattr(exc, "errno", None)
        if code in (errno_mod.EHOSTUNREACH, errno_mod.ENETUNREACH):
            return err("unreachable", f"unreachable: {strerror or 'no route to host'}")
        if code == errno_mod.ETIMEDOUT:
            return err("timeout", "timeout: connection timed out")
        return err("io", f"I/O error ({strerror or type(exc).__name__})")
    text = str(exc).replace(url, where) if url else str(exc)
    return err("error", f"{type(exc).__name__}: {text}")


def refine_network_error(e: SourceError, url: str) -> SourceError:
    """FFmpeg reports an unknown host as a bare EIO; name the real cause when DNS fails."""
    if e.kind != "io":
        return e
    host = urlsplit(url).hostname
    if not host:
        return e
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return SourceError("unreachable", f"{redact_url(url)}: unreachable: cannot resolve host {host!r} "
                                          f"(check the name or DNS)")
    return e

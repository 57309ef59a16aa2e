"""Webhook sink: HTTP POST of events with timeouts, retries with exponential backoff, an HMAC-SHA256
signature and a dead-letter file.

Why these choices:
- Retries double the wait after every transient failure (connection refused, timeout, 5xx, 408,
  429, a broken HTTP response), capped, so a struggling receiver is not hammered. When an event
  has had `max_attempts`, it and the rest of the batch are handed back to the runner
  (`PartialDelivery`): they stay in the spool and are replayed later, so an outage loses nothing
  and costs one event's retries per replay attempt, not every event's.
- A 4xx other than 408/429 means the receiver rejects the content: retrying cannot help, so the
  event goes to the dead-letter file (one JSON line per event with the reason; an operator can
  re-post them), counted in `vap_sink_dead_letter_total`, never as delivered. Without a
  dead-letter file a rejected event is dropped, logged and counted (`vap_sink_dropped_total`).
- Redirects are refused (3xx is a rejection): urllib would turn a redirected POST into a bodiless
  GET, and the event would count as delivered while the receiver got nothing. Configure the final URL.
- Signature: `X-Vap-Signature: sha256=<hex HMAC-SHA256(secret, "<X-Vap-Timestamp>." + body)>`.
  Including the timestamp lets receivers reject replays older than a few minutes.
- Credentials in headers come from the environment (`headers_env`), so they never appear in the
  YAML or in `vap validate`.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from vap_video.pipeline.config import ConfigError, redact_url
from vap_video.pipeline.sinks.base import PartialDelivery, Sink, SinkConfigBase, SinkKind, encode, env_secret

log = logging.getLogger("vap.sinks.webhook")

SIGNATURE_HEADER = "X-Vap-Signature"
TIMESTAMP_HEADER = "X-Vap-Timestamp"
EVENT_ID_HEADER = "X-Vap-Event-Id"


class WebhookSinkConfig(SinkConfigBase):
    """POST events to an HTTP endpoint (alerting services, serverless functions)."""

    type: Literal["webhook"] = Field("webhook", description="Sink kind")
    url: str = Field(description="Endpoint, http:// or https://")
    batch: bool = Field(False, description="POST a JSON array per batch instead of one JSON object per event")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (values are masked "
                                    "in `vap validate` when the name looks secret; prefer headers_env for tokens)")
    headers_env: dict[str, str] = Field(default_factory=dict, description="Request headers whose values come from "
                                        "environment variables, e.g. {'Authorization': 'HOOK_AUTH'} (an unset "
                                        "variable is a config error)")
    secret_env: str | None = Field("VAP_WEBHOOK_SECRET", description="Environment variable holding the HMAC "
                                   "secret; unset or empty sends no signature")
    timeout_s: float = Field(5.0, gt=0, description="Timeout of one request (connect and response)")
    max_attempts: int = Field(5, ge=1, description="Attempts per request before giving up")
    backoff_initial_s: float = Field(0.5, gt=0, description="Wait after the first failure; doubles per attempt")
    backoff_max_s: float = Field(30.0, gt=0, description="Cap of the backoff")
    dead_letter: Path | None = Field(Path("events/webhook-dead-letter.jsonl"),
                                     description="File for events the receiver rejected (4xx other than 408/429, "
                                     "3xx); None drops them (counted). Failures that may pass are spooled and "
                                     "retried, never dead-lettered")


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value; receivers recompute it to check origin and integrity."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class _Interrupted(Exception):
    """vap is shutting down: keep the events (spool) rather than dead-letter them."""


class _Permanent(Exception):
    """The receiver rejected the request; retrying the same body cannot succeed."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: the 3xx comes back as an HTTPError (a rejection) instead of a bodiless GET."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class WebhookSink(Sink):
    def __init__(self, cfg: WebhookSinkConfig) -> None:
        if not cfg.url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"sinks: {cfg.name}: webhook url must start with http:// or https://, "
                              f"got {redact_url(cfg.url)!r}")
        self.cfg = cfg
        self.name = cfg.name
        secret = env_secret(cfg.secret_env)
        self.secret = secret.encode() if secret else None
        self.where = redact_url(cfg.url)
        self.env_headers: dict[str, str] = {}
        for header, var in cfg.headers_env.items():
            value = env_secret(var)
            if value is None:
                raise ConfigError(f"sinks: {cfg.name}: headers_env.{header} names the environment variable "
                                  f"{var}, which is not set; export it or remove the header")
            self.env_headers[header] = value
        self._closing = threading.Event()
        self._dead_fh: Any = None
        if cfg.dead_letter is not None:
            try:
                Path(cfg.dead_letter).parent.mkdir(parents=True, exist_ok=True)
                self._dead_fh = open(cfg.dead_letter, "a", encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"sinks: {cfg.name}: cannot write dead-letter file {cfg.dead_letter} "
                                  f"({exc.strerror}); choose a writable path") from None

    def write(self, events: list[dict[str, Any]]) -> None:
        bodies = [(events, b"[" + b",".join(encode(e) for e in events) + b"]")] if self.cfg.batch else \
            [([e], encode(e)) for e in events]
        for i, (group, body) in enumerate(bodies):
            try:
                self._post(body, group[0]["id"] if not self.cfg.batch else None)
            except _Permanent as exc:
                self._reject(group, str(exc))
            except _Interrupted:
                raise PartialDelivery(f"webhook {self.where}: shutting down during retries",
                                      [e for g, _ in bodies[i:] for e in g]) from None
            except ConnectionError as exc:
                # The receiver is unreachable or failing: this event had its attempts. Hand it and
                # the rest back to the runner, which keeps them in the spool and replays later,
                # instead of spending max_attempts on every event of the batch.
                raise PartialDelivery(f"webhook {self.where}: {exc}",
                                      [e for g, _ in bodies[i:] for e in g]) from None

    def _post(self, body: bytes, event_id: str | None) -> None:
        """One request with retries; raises _Permanent (4xx) or ConnectionError (attempts exhausted)."""
        delay = self.cfg.backoff_initial_s
        last = ""
        for attempt in range(1, self.cfg.max_attempts + 1):
            ts = str(int(time.time()))
            headers = {"Content-Type": "application/json", "User-Agent": "vap", TIMESTAMP_HEADER: ts,
                       **self.cfg.headers, **self.env_headers}
            if event_id:
                headers[EVENT_ID_HEADER] = event_id
            if self.secret:
                headers[SIGNATURE_HEADER] = sign(self.secret, ts, body)
            req = urllib.request.Request(self.cfg.url, data=body, method="POST", headers=headers)
            try:
                with _OPENER.open(req, timeout=self.cfg.timeout_s) as resp:
                    resp.read()
                    code = resp.status
                if 200 <= code < 300:
                    return
                last = f"HTTP {code}"  # 1xx or another odd status: not an acceptance
            except urllib.error.HTTPError as exc:
                exc.close()
                if 300 <= exc.code < 400:
                    raise _Permanent(f"HTTP {exc.code} redirect to {redact_url(exc.headers.get('Location') or '?')} "
                                     "refused; set the sink's url to the final endpoint") from None
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    raise _Permanent(f"HTTP {exc.code} {exc.reason}") from None
                last = f"HTTP {exc.code} {exc.reason}"
            except http.client.HTTPException as exc:  # a broken response (bad status line, cut off)
                last = f"bad HTTP response ({type(exc).__name__}: {exc})"
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = "timeout" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else str(reason)
            if attempt < self.cfg.max_attempts:
                log.warning("webhook %s: attempt %d/%d failed (%s); retrying in %.1fs", self.name, attempt,
                            self.cfg.max_attempts, last, delay)
                if self._closing.wait(delay):
                    raise _Interrupted()
                delay = min(delay * 2, self.cfg.backoff_max_s)
        raise ConnectionError(f"gave up after {attempt} attempts, last: {last}")

    def _reject(self, events: list[dict[str, Any]], reason: str) -> None:
        """The receiver refused these events for good: dead-letter them (or drop them), counted, not delivered."""
        self.not_delivered += len(events)
        if self._dead_fh is None:
            if self.metrics is not None:
                self.metrics.sink_dropped.labels(self.name).inc(len(events))
            log.error("webhook %s: %d events rejected (%s) and dropped (no dead_letter file): %s", self.name,
                      len(events), reason, [e["id"] for e in events])
            return
        now = time.time()
        self._dead_fh.write("".join(json.dumps({"failed_at": round(now, 3), "sink": self.name, "url": self.where,
                                                "reason": reason, "event": e}, separators=(",", ":")) + "\n"
                                    for e in events))
        self._dead_fh.flush()
        if self.metrics is not None:
            self.metrics.sink_dead_letter.labels(self.name).inc(len(events))
        log.error("webhook %s: %d events written to the dead-letter file %s (%s)", self.name, len(events),
                  self.cfg.dead_letter, reason)

    def close(self) -> None:
        self._closing.set()
        if self._dead_fh is not None:
            self._dead_fh.close()


KIND = SinkKind(WebhookSinkConfig, WebhookSink)

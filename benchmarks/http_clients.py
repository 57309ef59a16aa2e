"""The console issue's HTTP probe, run as its own process against a running vap.

    VAP_API_TOKEN=... python benchmarks/http_clients.py --port 9108 [--slow 300] [--rapid 1000] [--hold 30]

Why a separate process: clients started inside the process under test share its GIL and make the
pipeline look slower (or, by GIL hand-off luck, faster) than a real attacker on the network would.
Here they only share the CPUs. The probe, in order:

1. `--slow` half-sent POST /streams connections, opened and then held without ever finishing:
   even ones send every header (with the token) and one byte of a 999-byte body, so the server
   waits in its body read; odd ones stop in the middle of the headers (no token: what an
   attacker without one can do). None is reopened when the server cuts it.
2. While those are held, `--rapid` POST /streams requests from `--concurrency` threads, one fresh
   connection each: every other one carries the valid token (bodies rotate: a name that exists,
   a file outside the media roots, a typo'd key), the rest carry no token or a wrong one and must
   get 401. A 503 (connection cap full) is retried after its Retry-After, up to `--deadline`
   seconds, as a well-behaved client would; the final answer per request is what is counted.
3. Idle (slow sockets still held, if the server has not cut them) until `--hold` seconds after
   the start, watching when and how each slow connection is answered.

Prints one JSON object on stdout; times are `time.monotonic()` (CLOCK_MONOTONIC, the same clock in
every process of the machine), so the caller can line them up with its own samples.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

AUTHORISED_BODIES = (
    {"name": "cam1", "url": "rtsp://127.0.0.1:9/dup"},     # the name exists: 409
    {"name": "probe", "url": "/etc/shadow"},               # outside media roots: 403, same as any path
    {"name": "probe", "url": "rtsp://127.0.0.1:9/x", "fsp": 5},  # typo'd key: 400 naming it
)


def open_slow(host: str, port: int, n: int, token: str) -> list[tuple[str, socket.socket]]:
    """Open n half-sent POSTs; returns (kind, socket) for those the server accepted a connect for."""
    socks = []
    for i in range(n):
        try:
            s = socket.create_connection((host, port), timeout=5)
        except OSError:
            continue
        if i % 2 == 0:
            kind = "body"
            s.sendall(b"POST /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 999\r\n\r\n{")
        else:
            kind = "headers"
            s.sendall(b"POST /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
        s.setblocking(False)
        socks.append((kind, s))
    return socks


def poll_slow(socks: list[tuple[str, socket.socket]], fates: list[str | None], t_answer: list[float | None]) -> None:
    """Record, once, how each still-open slow connection ended: the status it got, or closed without one."""
    for i, (_, s) in enumerate(socks):
        if fates[i] is not None:
            continue
        try:
            head = s.recv(16)
        except BlockingIOError:
            continue
        except OSError as exc:
            head, fates[i] = b"", f"reset ({type(exc).__name__})"
        if fates[i] is None:
            fates[i] = head[9:12].decode() if head.startswith(b"HTTP/") else "closed without an answer"
        t_answer[i] = time.monotonic()
        s.close()


def one_request(host: str, port: int, i: int, token: str, deadline: float) -> tuple[str, int | str, int]:
    """POST /streams number i until it gets an answer other than 503; (auth class, status, attempts)."""
    if i % 2 == 0:
        auth, headers = "token", {"Authorization": f"Bearer {token}"}
        body = AUTHORISED_BODIES[(i // 2) % len(AUTHORISED_BODIES)]
    else:
        auth = "no token" if i % 4 == 1 else "wrong token"
        headers = {} if auth == "no token" else {"Authorization": "Bearer not-the-token-0123456789"}
        body = {"name": f"intruder{i}", "url": "rtsp://127.0.0.1:9/x"}
    headers["Content-Type"] = "application/json"
    data = json.dumps(body).encode()
    attempts = 0
    while True:
        attempts += 1
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request("POST", "/streams", body=data, headers=headers)
            r = conn.getresponse()
            r.read()
            status: int | str = r.status
            retry = float(r.getheader("Retry-After") or 1)
        except OSError as exc:           # refused or reset (backlog full): treat like a 503
            status, retry = type(exc).__name__, 0.2
        finally:
            conn.close()
        if (isinstance(status, int) and status != 503) or time.monotonic() + retry > deadline:
            return auth, status, attempts
        time.sleep(min(retry, 1.0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--slow", type=int, default=300)
    ap.add_argument("--rapid", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--hold", type=float, default=30.0, help="seconds from the start until the slow sockets close")
    ap.add_argument("--deadline", type=float, default=60.0, help="seconds a rapid request may keep retrying a 503")
    ap.add_argument("--token-env", default="VAP_API_TOKEN")
    args = ap.parse_args()
    token = os.environ.get(args.token_env, "")
    if not token:
        print(f"http_clients: set ${args.token_env} to the API token of the vap under test", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    socks = open_slow(args.host, args.port, args.slow, token)
    fates: list[str | None] = [None] * len(socks)
    t_answer: list[float | None] = [None] * len(socks)
    t_slow_open = time.monotonic()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            poll_slow(socks, fates, t_answer)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    deadline = time.monotonic() + args.deadline
    t_rapid0 = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(lambda i: one_request(args.host, args.port, i, token, deadline), range(args.rapid)))
    t_rapid1 = time.monotonic()
    time.sleep(max(0.0, t_start + args.hold - time.monotonic()))
    stop.set()
    watcher.join(2)
    poll_slow(socks, fates, t_answer)
    for i, (_, s) in enumerate(socks):
        if fates[i] is None:
            fates[i] = "still open at the end"
            s.close()
    statuses: dict[str, Counter] = {}
    for auth, status, _ in results:
        statuses.setdefault(auth, Counter())[str(status)] += 1
    slow: dict[str, Counter] = {}
    for (kind, _), fate in zip(socks, fates):
        slow.setdefault(kind, Counter())[str(fate)] += 1
    held = [t - t_slow_open for t in t_answer if t is not None]
    out = {
        "t_start": t_start, "t_slow_open": t_slow_open, "t_rapid_start": t_rapid0, "t_rapid_end": t_rapid1,
        "t_end": time.monotonic(), "slow_opened": len(socks), "slow_requested": args.slow,
        "slow_fates": {k: dict(v) for k, v in slow.items()},
        "slow_last_answer_s": round(max(held), 2) if held else None,
        "rapid": args.rapid, "concurrency": args.concurrency, "rapid_seconds": round(t_rapid1 - t_rapid0, 3),
        "rapid_statuses": {k: dict(v) for k, v in statuses.items()},
        "rapid_attempts": sum(a for _, _, a in results),
        "unauthorised_not_401": sum(1 for auth, st, _ in results if auth != "token" and st != 401),
        "client_cpu_s": round(time.process_time(), 3),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MQTT sink against a real mosquitto broker started by the test (Debian package).

The required scenario: events arrive on the right topics; the broker stops mid-run, events spool on
disk, the broker comes back, and every event arrives — none missing, none twice after dedup by id,
in order per stream. Plus retained state/availability and the last will.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vap_video.pipeline.events import make_event
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.settings import parse_settings
from vap_video.pipeline.sinks import EventBus, SinkRunner, build_sink
from tests.real_servers import mosquitto

mqtt = pytest.importorskip("paho.mqtt.client")


class Subscriber:
    """A persistent-session QoS 1 subscriber that records every message (so nothing is lost across the
    broker restart: the broker keeps its session and queued messages in its persistence file)."""

    def __init__(self, port: int, topic: str = "vap/#", client_id: str = "test-sub", clean: bool = False):
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.c.reconnect_delay_set(0.2, 1)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.subscribed.wait(10), "subscriber could not subscribe"

    def _on_message(self, c, u, msg):
        with self.lock:
            self.msgs.append((msg.topic, msg.payload, bool(msg.retain)))

    def events(self) -> list[tuple[str, dict]]:
        with self.lock:
            return [(t, json.loads(p)) for t, p, _ in self.msgs if t.endswith("/events")]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _mqtt_cfg(port: int, tmp_path, **extra):
    return parse_settings({"sinks": [{"type": "mqtt", "host": "127.0.0.1", "port": port,
                                      "client_id": "vap-test", "connect_wait_s": 0.3, "ack_timeout_s": 2,
                                      "spool": {"dir": str(tmp_path / "spool")}, **extra}]}).sinks[0]


def _batch(stream: str, i: int) -> list[dict]:
    box = dict(track_id=f"{stream}:{i + 1}", class_id=0, score=0.9, box=[1.0, 2.0, 3.0, 4.0], **{"class": "person"})
    return [make_event("track.start", stream, time.time(), **box),
            make_event("zone.enter", stream, time.time(), zone="door", **box)]


def test_broker_restart_spools_and_delivers_everything_in_order(tmp_path):
    broker = mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port)
    m = Metrics()
    runner = SinkRunner(build_sink(_mqtt_cfg(broker.port, tmp_path)), _mqtt_cfg(broker.port, tmp_path).filter, m,
                        retry_s=0.2, retry_max_s=1.0)
    bus = EventBus([runner])
    sent: list[dict] = []
    try:
        up = make_event("stream.up", "a", time.time(), state="streaming")
        bus.publish([up])
        sent.append(up)
        for i in range(10):
            for s in ("a", "b"):
                batch = _batch(s, i)
                bus.publish(batch)
                sent.extend(batch)
        _wait(lambda: len(sub.events()) >= len(sent), 15, "events before the outage")
        topics = {t for t, _ in sub.events()}
        assert topics == {"vap/a/events", "vap/b/events"}
        assert all(t == f"vap/{e['stream']}/events" for t, e in sub.events())

        broker.stop()                                  # mid-run outage
        for i in range(10, 25):
            for s in ("a", "b"):
                batch = _batch(s, i)
                bus.publish(batch)
                sent.extend(batch)
            time.sleep(0.02)
        get = m.registry.get_sample_value
        _wait(lambda: (get("vap_spool_events", {"sink": "mqtt"}) or 0) > 0, 10, "events to spool")
        assert get("vap_sink_up", {"sink": "mqtt"}) == 0
        assert list((tmp_path / "spool").glob("seg-*.jsonl")), "spool files on disk"

        broker.start()                                 # same port, same persistence file
        _wait(lambda: len({e["id"] for _, e in sub.events()}) >= len(sent), 40, "every event after the restart")
        _wait(lambda: get("vap_spool_events", {"sink": "mqtt"}) == 0, 10, "the spool to drain")
        assert runner.close(5.0)

        received = sub.events()
        seen: set[str] = set()
        deduped = []
        for _, e in received:                          # what a consumer does: drop ids it has seen
            if e["id"] not in seen:
                seen.add(e["id"])
                deduped.append(e)
        assert seen == {e["id"] for e in sent}         # nothing missing
        assert len(deduped) == len(sent)               # nothing twice after dedup
        for s in ("a", "b"):                           # in order per stream
            assert [e["id"] for e in deduped if e["stream"] == s] == [e["id"] for e in sent if e["stream"] == s]
        assert get("vap_sink_events_total", {"sink": "mqtt"}) >= len(sent)
        assert get("vap_sink_errors_total", {"sink": "mqtt"}) >= 1

        # Retained: a late subscriber gets the stream state and the availability "offline" set at close.
        late = Subscriber(broker.port, topic="vap/#", client_id="late", clean=True)
        _wait(lambda: any(t == "vap/a/state" for t, _, _ in late.msgs), 5, "retained state")
        with late.lock:
            retained = {t: p for t, p, r in late.msgs if r}
        assert json.loads(retained["vap/a/state"])["state"] == "streaming"
        assert retained["vap/status"] == b"offline"    # the sink said goodbye at close
        late.close()
    finally:
        runner.close(1.0)
        sub.close()
        broker.stop()


def test_delivery_resumes_within_3s_of_the_broker_coming_back(tmp_path):
    """After a 12 s outage the runner's backoff has grown to 8 s and paho's own reconnect delay
    was up to 15 s: delivery resumed 3-37 s after the broker was back. paho's reconnect now wakes
    the runner and its delay is bounded at 1 s: the first spooled event must be acknowledged within
    3 s of the broker accepting connections, and `vap_sink_up` must follow the link."""
    broker = mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port)
    m = Metrics()
    cfg = parse_settings({"sinks": [{"type": "mqtt", "host": "127.0.0.1", "port": broker.port,
                                     "client_id": "vap-resume", "spool": {"dir": str(tmp_path / "spool")}}]}).sinks[0]
    runner = SinkRunner(build_sink(cfg), cfg.filter, m)   # production retry: 1 s doubling to 30 s
    get = m.registry.get_sample_value
    delivered = lambda: get("vap_sink_events_total", {"sink": "mqtt"}) or 0
    try:
        first = _batch("a", 0)
        runner.offer(first, 1.0)
        _wait(lambda: delivered() >= len(first), 10, "delivery before the outage")
        broker.stop()
        _wait(lambda: get("vap_sink_up", {"sink": "mqtt"}) == 0, 3, "vap_sink_up to drop with the link")
        spooled = _batch("a", 1)
        runner.offer(spooled, 1.0)
        time.sleep(12.0)                                  # long enough for the backoffs to grow
        assert delivered() == len(first) and get("vap_spool_events", {"sink": "mqtt"}) == len(spooled)
        broker.start()                                    # returns once the broker accepts connections
        back = time.monotonic()
        _wait(lambda: delivered() > len(first), 30, "the first spooled event")
        took = time.monotonic() - back
        assert took < 3.0, f"first spooled event delivered {took:.1f}s after the broker was back"
        assert get("vap_sink_up", {"sink": "mqtt"}) == 1
        _wait(lambda: {e["id"] for e in spooled} <= {e["id"] for _, e in sub.events()}, 10, "the subscriber")
    finally:
        runner.close(2.0)
        sub.close()
        broker.stop()


_CHILD = """
import os, sys, time
from vap_video.pipeline.settings import parse_settings
from vap_video.pipeline.sinks import build_sink
cfg = parse_settings({"sinks": [{"type": "mqtt", "host": "127.0.0.1", "port": int(sys.argv[1]),
                                 "client_id": "vap-dies", "spool": {"enabled": False}}]}).sinks[0]
sink = build_sink(cfg)
deadline = time.time() + 10
while not sink._connected.is_set() and time.time() < deadline:
    time.sleep(0.05)
print("connected", flush=True)
time.sleep(0.5)
os._exit(0)   # dies without DISCONNECT: the broker must publish the last will
"""


def test_availability_online_then_last_will_offline(tmp_path):
    broker = mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port, topic="vap/status", client_id="watch", clean=True)
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD, str(broker.port)], capture_output=True, text=True,
                             timeout=60, cwd=os.getcwd())
        assert "connected" in out.stdout, out.stderr
        _wait(lambda: [p for t, p, _ in sub.msgs] [-1:] == [b"offline"], 10, "the last will")
        assert [p for _, p, _ in sub.msgs] == [b"online", b"offline"]
    finally:
        sub.close()
        broker.stop()


def test_credentials_come_from_env_and_tls_files_are_checked(tmp_path, monkeypatch):
    from vap_video.pipeline.config import ConfigError
    monkeypatch.setenv("VAP_MQTT_USERNAME", "alice")
    monkeypatch.setenv("VAP_MQTT_PASSWORD", "s3cret")
    cfg = _mqtt_cfg(1, tmp_path)
    assert "s3cret" not in cfg.model_dump_json()        # the config holds the variable's name only
    sink = build_sink(cfg)
    try:
        assert sink.client._username == b"alice" and sink.client._password == b"s3cret"
    finally:
        sink.close()
    with pytest.raises(ConfigError, match="TLS file"):
        build_sink(_mqtt_cfg(1, tmp_path, tls={"enabled": True, "ca_file": str(tmp_path / "missing.pem")}))


def test_tls_and_password_auth_against_a_real_broker(tmp_path, monkeypatch):
    """TLS with a private CA and user/password from the environment, against mosquitto configured so."""
    import shutil as _sh
    openssl, passwd = _sh.which("openssl"), _sh.which("mosquitto_passwd")
    if openssl is None or passwd is None:
        pytest.skip("openssl and mosquitto_passwd are needed (Debian packages openssl, mosquitto)")
    d = tmp_path / "tls"
    d.mkdir()

    def run(*args):
        subprocess.run(args, cwd=d, check=True, capture_output=True, timeout=60)

    run(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=vap-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run(openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
        "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run(openssl, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    run(passwd, "-b", "-c", "passwords", "vapuser", "vap-pass")

    broker = mosquitto(tmp_path / "broker")
    conf = Path(broker.argv[-1])
    conf.write_text(conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
                    + f"password_file {d / 'passwords'}\ncafile {d / 'ca.pem'}\ncertfile {d / 'server.pem'}\n"
                    f"keyfile {d / 'server.key'}\n")
    broker.start()
    try:
        cfg = _mqtt_cfg(broker.port, tmp_path, tls={"enabled": True, "ca_file": str(d / "ca.pem")})
        # wrong password: refused, nothing delivered, the write fails (and would spool)
        monkeypatch.setenv("VAP_MQTT_USERNAME", "vapuser")
        monkeypatch.setenv("VAP_MQTT_PASSWORD", "wrong")
        sink = build_sink(cfg)
        with pytest.raises(ConnectionError):
            sink.write([make_event("stream.up", "a", time.time(), state="streaming")])
        sink.close()

        monkeypatch.setenv("VAP_MQTT_PASSWORD", "vap-pass")
        got: list[bytes] = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-sub")
        sub.username_pw_set("vapuser", "vap-pass")
        sub.tls_set(ca_certs=str(d / "ca.pem"))
        ready = threading.Event()
        sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("vap/a/events", qos=1)
        sub.on_subscribe = lambda *a: ready.set()
        sub.on_message = lambda c, u, msg: got.append(msg.payload)
        sub.connect("localhost", broker.port)
        sub.loop_start()
        assert ready.wait(10)
        sink = build_sink(cfg)
        ev = make_event("stream.up", "a", time.time(), state="streaming")
        sink.write([ev])
        _wait(lambda: got, 10, "the event over TLS")
        assert json.loads(got[0])["id"] == ev["id"]
        sink.close()
        sub.disconnect()
        sub.loop_stop()
    finally:
        broker.stop()


def test_unacknowledged_messages_do_not_pile_up_in_paho(tmp_path, monkeypatch):
    """Review finding 16: every timed-out batch stayed queued in paho and each replay queued another copy."""
    import socket

    import vap_video.pipeline.sinks.mqtt as sink_mqtt

    monkeypatch.setattr(sink_mqtt, "MAX_QUEUED", 30, raising=False)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(5)
    conns = []

    def broker_that_never_acks():                # CONNACK, then reads and ignores every PUBLISH
        conn, _ = lsock.accept()
        conns.append(conn)
        conn.recv(65536)
        conn.sendall(b"\x20\x02\x00\x00")
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    threading.Thread(target=broker_that_never_acks, daemon=True).start()
    cfg = parse_settings({"sinks": [{"type": "mqtt", "host": "127.0.0.1", "port": lsock.getsockname()[1],
                                     "ack_timeout_s": 0.2, "connect_wait_s": 5,
                                     "spool": {"dir": str(tmp_path / "spool")}}]}).sinks[0]
    sink = build_sink(cfg)
    try:
        ev = [make_event("track.end", "cam", time.time(), track_id="cam:1", class_id=0, score=0.9,
                         box=[0.0, 0.0, 1.0, 1.0], duration_s=1.0, **{"class": "car"}) for _ in range(10)]
        errors = []
        for _ in range(8):                       # the runner's replays of the same batch
            with pytest.raises((TimeoutError, ConnectionError)) as exc:
                sink.write(ev)
            errors.append(str(exc.value))
        assert any("queue" in e.lower() for e in errors)   # refused once paho's queue is full
        assert len(sink.client._out_messages) <= 30          # bounded, not 8 x 11 copies
    finally:
        sink.close()
        for c in conns:
            c.close()
        lsock.close()

"""The fabric against Apache Kafka secured the way managed Kafka is: SASL_SSL with SCRAM
users, and TLS with client certificates, on loopback, signed by a CA this test makes.
Right settings connect (the whole fabric runs on SCRAM); a wrong password or CA stops a
process at start with one sentence naming the setting to fix."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from fabric import kafka
from fabric.dev import kafka_broker
from fabric.dev.procs import free_port
from fabric.dev.stack import Stack
from fabric.errors import ConfigError
from fabric.settings import Settings
from fabric.testing import bearer
from tests.integration.certs import Authority
from tests.integration.conftest import ROOT, eventually, start_fabric, variant

pytestmark = pytest.mark.integration

SCRAM = "org.apache.kafka.common.security.scram.ScramLoginModule required{};"


class SecureBroker:
    def __init__(self, base: Settings, home: Path) -> None:
        self.ca = Authority(home / "ca")
        self.sasl_port, self.tls_port, ctl = free_port(), free_port(), free_port()
        self.settings = base.model_copy(
            update={"data_dir": home, "kafka": base.kafka.model_copy(update={
                "bootstrap": f"127.0.0.1:{self.sasl_port}", "controller_port": ctl, "broker": "kafka",
                "brokers": 1, "topic_prefix": "sec"})}
        )  # fmt: skip
        h = "127.0.0.1"
        self.extra = {
            "listeners": f"SASL_SSL://{h}:{self.sasl_port},SSL://{h}:{self.tls_port},CONTROLLER://{h}:{ctl}",
            "advertised.listeners": f"SASL_SSL://{h}:{self.sasl_port},SSL://{h}:{self.tls_port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER",
            # Kafka's own unsecured validator: accepts an unsigned JWT with sub and exp (tests only)
            "listener.name.sasl_ssl.oauthbearer.sasl.jaas.config": (
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
            ),
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": SCRAM.format(
                ' username="broker" password="broker-secret"'
            ),
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": SCRAM.format(""),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.ca.keystore("broker")),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca.ca_file),
            "listener.name.ssl.ssl.client.auth": "required",
        }
        self.scram = (
            "SCRAM-SHA-512=[name=broker,password=broker-secret]",
            "SCRAM-SHA-256=[name=alice,password=alice-secret]",
            "SCRAM-SHA-512=[name=alice,password=alice-secret]",
        )

    def start(self) -> subprocess.Popen[bytes]:
        argv = kafka_broker.prepare(self.settings, extra=self.extra, scram=self.scram)
        with (self.settings.data_dir / "broker.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not _answers(self.sasl_port):
            assert proc.poll() is None, f"the secured broker exited; see {self.settings.data_dir / 'broker.log'}"
            assert time.monotonic() < deadline, "the secured broker did not start within 120 s"
            time.sleep(0.1)
        return proc

    def scram_settings(self, base: Settings, mechanism: str = "SCRAM-SHA-256", **kafka: Any) -> Settings:
        update = {
            "bootstrap": f"127.0.0.1:{self.sasl_port}", "controller_port": self.settings.kafka.controller_port,
            "broker": "kafka", "security_protocol": "SASL_SSL", "sasl_mechanism": mechanism,
            "sasl_username": "alice", "sasl_password": SecretStr("alice-secret"), "ssl_cafile": self.ca.ca_file,
            **kafka,
        }  # fmt: skip
        return base.model_copy(update={"kafka": base.kafka.model_validate({**base.kafka.model_dump(), **update})})

    def tls_settings(self, base: Settings, **kafka: Any) -> Settings:
        crt, key = self.ca.issue("fabric-client", server=False)
        update = {"bootstrap": f"127.0.0.1:{self.tls_port}", "broker": "kafka", "security_protocol": "SSL",
                  "ssl_cafile": self.ca.ca_file, "ssl_certfile": crt, "ssl_keyfile": key, **kafka}  # fmt: skip
        return base.model_copy(update={"kafka": base.kafka.model_validate({**base.kafka.model_dump(), **update})})


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def secure(stack: Stack, stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    broker = SecureBroker(stack_settings, tmp_path_factory.mktemp("secure"))
    proc = broker.start()
    yield broker
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def roundtrip(s: Settings) -> None:
    """Create a topic, write a record, read it back, all with the fabric's clients."""
    from fabric.kafka.topics import ensure_topics, partitions_of

    topic = s.topic(f"probe-{uuid.uuid4().hex[:6]}")
    await ensure_topics(s, [topic])
    p = kafka.producer(s)
    await kafka.start(s, p)
    try:
        await p.send_and_wait(topic, b"hello", key=b"k", partition=0)
    finally:
        await p.stop()
    c = kafka.consumer(s)
    await kafka.start(s, c)
    try:
        c.assign((await partitions_of(c, topic))[:1])
        got = await c.getmany(timeout_ms=5000)
        assert [r.value for rs in got.values() for r in rs] == [b"hello"]
    finally:
        await c.stop()


async def test_the_fabric_runs_on_sasl_ssl_with_scram(
    secure: SecureBroker, stack_settings: Settings, tmp_path: Path
) -> None:
    s = secure.scram_settings(variant(stack_settings, tmp_path))
    await roundtrip(s)
    await roundtrip(secure.scram_settings(s, "SCRAM-SHA-512"))
    # the whole fabric: an event over HTTP is routed, materialized and pulled
    tenant = f"sec{uuid.uuid4().hex[:6]}"
    fab = start_fabric(s, ("worker", "router"))
    try:
        async with httpx.AsyncClient(base_url=fab.url, headers=bearer(s, tenant), timeout=15) as c:
            event = {"id": uuid.uuid4().hex, "source": "test://sec", "type": "page.updated", "subject": "p1",
                     "tenant": tenant, "sequence": 1, "data": {"app": "a", "page": "p1", "title": "secured"}}  # fmt: skip
            r = await c.post("/v1/events", json=[event])
            assert r.status_code == 202, r.text

            async def pulled() -> bool:
                got = await c.get("/v1/contexts/PageDSL/p1")
                return got.status_code == 200 and got.json()["event"]["data"]["title"] == "secured"

            await eventually(pulled, timeout=60)
    finally:
        fab.stop()


@contextlib.contextmanager
def token_endpoint(client_id: str, secret: str) -> Iterator[tuple[str, list[str]]]:
    """An OAuth token endpoint on loopback (client-credentials grant, HTTP Basic) that
    issues unsigned JWTs, which Kafka's unsecured OAUTHBEARER validator accepts."""
    issued: list[str] = []
    expected = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
            if self.headers.get("authorization") != expected or "grant_type=client_credentials" not in form:
                self.send_response(401)
                self.end_headers()
                return
            now = int(time.time())
            part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
            token = f"{part({'alg': 'none'})}.{part({'sub': client_id, 'iat': now, 'exp': now + 600})}."
            issued.append(token)
            body = json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": 600}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token", issued
    finally:
        server.shutdown()
        server.server_close()


async def test_oauthbearer_connects_with_a_client_credentials_token(
    secure: SecureBroker, stack_settings: Settings, tmp_path: Path
) -> None:
    with token_endpoint("fabric-app", "app-secret") as (url, issued):
        s = secure.scram_settings(
            variant(stack_settings, tmp_path), "OAUTHBEARER", sasl_username="fabric-app",
            sasl_password=SecretStr("app-secret"), oauth_token_url=url,
        )  # fmt: skip
        await roundtrip(s)
        assert issued  # the token came from the endpoint, and Kafka accepted it
        bad = secure.scram_settings(s, "OAUTHBEARER", sasl_password=SecretStr("wrong"), oauth_token_url=url)
        with pytest.raises(ConfigError, match=r"kafka\.sasl_password"):
            await kafka.start(bad, kafka.admin(bad))


async def test_mutual_tls_connects(secure: SecureBroker, stack_settings: Settings, tmp_path: Path) -> None:
    await roundtrip(secure.tls_settings(variant(stack_settings, tmp_path)))


async def test_a_wrong_password_names_the_setting(secure: SecureBroker, stack_settings: Settings) -> None:
    s = secure.scram_settings(stack_settings, sasl_password=SecretStr("not-her-password"))
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password") as e:
        await kafka.start(s, kafka.admin(s))
    assert "\n" not in str(e.value)
    # a process started with it stops at once, saying the same
    done = await run_fabric(s, "worker")
    assert done.returncode != 0
    assert "kafka.sasl_password" in done.stderr, done.stderr[-2000:]


async def test_a_wrong_ca_names_the_setting(secure: SecureBroker, stack_settings: Settings, tmp_path: Path) -> None:
    other = Authority(tmp_path / "other-ca", name="someone-elses-ca")
    for s in (
        secure.scram_settings(stack_settings, ssl_cafile=other.ca_file),
        secure.tls_settings(stack_settings, ssl_cafile=other.ca_file),
    ):
        with pytest.raises(ConfigError, match=r"kafka\.ssl_cafile") as e:
            await kafka.start(s, kafka.admin(s))
        assert "\n" not in str(e.value)
    done = await run_fabric(s, "router")
    assert done.returncode != 0
    assert "kafka.ssl_cafile" in done.stderr, done.stderr[-2000:]


async def run_fabric(s: Settings, command: str) -> subprocess.CompletedProcess[str]:
    """``fabric <command>`` with these settings, to its end (off the event loop)."""
    env = {**os.environ, **s.to_env()}
    argv = [sys.executable, "-m", "fabric", command]
    return await asyncio.to_thread(subprocess.run, argv, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)

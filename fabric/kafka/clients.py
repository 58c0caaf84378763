"""Every Kafka client the fabric makes: producers, consumers and admin clients, built
from ``kafka`` settings in this one module.

The connection part (bootstrap, TLS, SASL) is the same for all of them, so a fabric
pointed at a managed Kafka (MSK, Confluent Cloud, Aiven) with
``FABRIC_KAFKA__SECURITY_PROTOCOL=SASL_SSL`` and a user and password needs nothing
else. ``start()`` turns the two failures a user makes when connecting (a wrong
password, a CA that does not sign the broker's certificate) into one sentence naming
the setting to fix, instead of a retry loop that never ends.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any, Protocol

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError
from aiokafka.producer import sender as aiokafka_sender

from fabric.errors import ConfigError
from fabric.settings import KafkaSettings, Settings


class _Startable(Protocol):
    async def start(self) -> None: ...


class ClientCredentials(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER tokens from an OAuth 2 token endpoint (client-credentials grant),
    reused until a minute before they expire."""

    def __init__(self, k: KafkaSettings) -> None:
        self.k = k
        self._token = ""
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if time.monotonic() < self._expires - 60:
                return self._token
            form = {"grant_type": "client_credentials"}
            if self.k.oauth_scope:
                form["scope"] = self.k.oauth_scope
            async with httpx.AsyncClient(timeout=10.0) as http:
                r = await http.post(
                    self.k.oauth_token_url, data=form,
                    auth=(self.k.sasl_username, self.k.sasl_password.get_secret_value()),
                )  # fmt: skip
            if r.status_code != 200:
                raise ConfigError(
                    f"kafka.oauth_token_url {self.k.oauth_token_url} refused the client credentials "
                    f"(kafka.sasl_username / kafka.sasl_password): HTTP {r.status_code}"
                )
            body = r.json()
            self._token = str(body["access_token"])
            self._expires = time.monotonic() + float(body.get("expires_in", 300))
            return self._token


def ssl_context(k: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context for ``SSL`` and ``SASL_SSL``; None for plaintext protocols."""
    if not k.security_protocol.endswith("SSL"):
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(k.ssl_cafile) if k.ssl_cafile else None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"kafka.ssl_cafile {k.ssl_cafile} cannot be read as PEM certificates: {e}") from e
    if k.ssl_certfile:
        try:
            ctx.load_cert_chain(
                str(k.ssl_certfile), str(k.ssl_keyfile) if k.ssl_keyfile else None,
                k.ssl_key_password.get_secret_value() or None,
            )  # fmt: skip
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"kafka.ssl_certfile {k.ssl_certfile} / kafka.ssl_keyfile cannot be loaded as a client certificate: {e}"
            ) from e
    ctx.check_hostname = k.ssl_check_hostname
    return ctx


def connection(settings: Settings) -> dict[str, Any]:
    """The arguments every client shares: where the brokers are and how to authenticate."""
    k = settings.kafka
    args: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap,
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
        "ssl_context": ssl_context(k),
    }
    if k.security_protocol.startswith("SASL"):
        args["sasl_mechanism"] = k.sasl_mechanism
        if k.sasl_mechanism == "OAUTHBEARER":
            args["sasl_oauth_token_provider"] = ClientCredentials(k)
        else:
            args["sasl_plain_username"] = k.sasl_username
            args["sasl_plain_password"] = k.sasl_password.get_secret_value()
    return args


def _transactions_retry_after(seconds: float) -> None:
    """A transaction's first send asks the coordinator to add its partitions; right after the
    previous commit the coordinator answers CONCURRENT_TRANSACTIONS until that commit's
    markers are written (about a millisecond here). aiokafka then waits a fixed 20 ms
    (``BACKOFF_OVERRIDE``, after KAFKA-5477) before it asks again, which puts 20-40 ms into
    every transactional batch: the stages' latency floor. Asking again sooner costs one
    small request per retry."""
    aiokafka_sender.BACKOFF_OVERRIDE = seconds


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A producer that waits for every in-sync replica (``acks=all``), idempotent on Kafka
    (retries after a lost ack do not write twice). A transactional one (``transactional_id``)
    retries a busy coordinator after ``kafka.txn_retry_backoff_ms``."""
    if overrides.get("transactional_id"):
        _transactions_retry_after(settings.kafka.txn_retry_backoff_ms / 1000)
    args: dict[str, Any] = {
        **connection(settings),
        "acks": "all",
        # Tansu cannot give producer ids; Apache Kafka and managed Kafka can
        "enable_idempotence": settings.kafka.broker == "kafka",
        "linger_ms": 2,
        "max_batch_size": 512 * 1024,
        "max_request_size": settings.max_event_bytes + 64 * 1024,
    }
    return AIOKafkaProducer(**{**args, **overrides})


def consumer(settings: Settings, *topics: str, group: str | None = None, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer that commits by hand and long-polls (``kafka.fetch_wait_ms``). With a
    ``group`` it joins that consumer group, with the session timeout from settings."""
    k = settings.kafka
    args: dict[str, Any] = {
        **connection(settings),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": k.fetch_wait_ms,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "isolation_level": "read_committed",
    }
    if group is not None:
        args.update(
            group_id=group,
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=max(200, k.session_timeout_ms // 5),
            rebalance_timeout_ms=k.session_timeout_ms,
        )
    return AIOKafkaConsumer(*topics, **{**args, **overrides})


def admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection(settings))


def _unverified(e: BaseException | None) -> ssl.SSLCertVerificationError | None:
    while e is not None:
        if isinstance(e, ssl.SSLCertVerificationError):
            return e
        e = e.__cause__ or e.__context__
    return None


def explain(settings: Settings, e: BaseException) -> ConfigError | None:
    """The setting to blame when a client cannot start, or None when it is the network."""
    k = settings.kafka
    if isinstance(e, SaslAuthenticationFailed | UnsupportedSaslMechanismError):
        return ConfigError(
            f"the Kafka brokers at {k.bootstrap} refused {k.sasl_mechanism} authentication: check "
            f"kafka.sasl_username ({k.sasl_username!r}) and kafka.sasl_password"
            f"{' and kafka.sasl_mechanism' if isinstance(e, UnsupportedSaslMechanismError) else ''}"
        )
    bad = _unverified(e)
    if bad is not None:
        return ConfigError(
            f"the Kafka brokers at {k.bootstrap} presented a certificate that kafka.ssl_cafile "
            f"({k.ssl_cafile or 'the system CAs'}) does not verify: {bad.verify_message}"
        )
    return None


async def start(settings: Settings, client: _Startable) -> None:
    """``client.start()``, with a wrong password or CA reported as the setting to fix.

    aiokafka logs why it could not connect and raises only that it could not; in that
    case one connection made the same way (TLS handshake, SASL exchange) says why."""
    try:
        await client.start()
    except KafkaError as e:
        why = explain(settings, e)
        if why is None and isinstance(e, KafkaConnectionError) and settings.kafka.security_protocol != "PLAINTEXT":
            why = await _probe(settings)
        if why is not None:
            raise why from e
        raise


async def _probe(settings: Settings) -> ConfigError | None:
    args = connection(settings)
    args.pop("bootstrap_servers")
    for address in settings.kafka.bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(create_conn(host, int(port), **args), 10.0)
        except (OSError, TimeoutError, KafkaError) as e:
            why = explain(settings, e)
            if why is not None:
                return why
            continue
        conn.close()
    return None

"""Settings: one frozen object, read once from ``FABRIC_*`` variables and passed down.

Nested parts use ``__`` in variable names (``FABRIC_KAFKA__BOOTSTRAP``); the most
used ones also have a short alias (``FABRIC_KAFKA_BOOTSTRAP``, ``FABRIC_REDIS_URL``,
``FABRIC_CLICKHOUSE_URL``). Backends are chosen by URL scheme: ``chdb:///dir`` is the
embedded ClickHouse engine, ``http://host:8123`` a ClickHouse server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fabric.errors import ConfigError

#: the schemas, patterns and policies shipped in the package (package data of the wheel)
BUNDLED = Path(__file__).resolve().parent / "schemas"


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Part):
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "ctx"
    partitions: int = 4
    group: str = Field("", description="consumer group prefix; default: the topic prefix")
    client_id: str = "context-fabric"
    # A restarted worker resumes once the broker has given up on the dead one's session
    # (on Tansu about twice this). Real Kafka refuses less than group.min.session.timeout.ms.
    session_timeout_ms: int = 6_000
    # How long the broker may hold a fetch with no data. Tansu answers only when it runs
    # out, not when data arrives, so there this bounds the latency each stage adds (5 ms);
    # Apache Kafka answers as soon as data arrives, so long polls cost nothing (500 ms).
    fetch_max_wait_ms: int = Field(0, description="0: 500 on Apache Kafka (broker=kafka), 5 on Tansu")
    txn_retry_backoff_ms: int = Field(
        2,
        ge=1,
        le=100,
        description="wait before the producer asks again to add partitions to a new transaction while the "
        "previous one's commit markers are still being written (aiokafka's fixed wait is 20 ms; KAFKA-5477)",
    )
    transaction_timeout_ms: int = Field(
        10_000,
        description="a dead worker's open transaction is aborted after this unless the worker comes back first; "
        "until then read_committed readers wait at it",
    )
    broker: str = Field("kafka", description="the embedded broker 'fabric dev up' starts: 'kafka' or 'tansu'")
    version: str = Field("4.1.0", description="the Apache Kafka version the embedded broker runs")
    heap_mb: int = Field(512, description="the embedded Apache Kafka broker's JVM heap")
    controller_port: int = Field(0, description="the embedded KRaft controller's port; 0: the bootstrap port + 1")
    brokers: int = Field(1, description="nodes of the embedded Apache Kafka cluster (1 or 3), on ports 2 apart")
    # Topics the fabric creates. 0: as many copies as there are brokers (at most 3), and
    # writes need all but one of them in sync (1 on a single broker).
    replication_factor: int = Field(0, description="copies of each topic the fabric creates; 0: min(brokers, 3)")
    min_insync_replicas: int = Field(0, description="replicas an acks=all write needs; 0: replication_factor - 1")
    transactional: bool = Field(True, description="route in Kafka transactions (exactly once); off on Tansu")
    # Connecting to a managed Kafka (docs in README "Managed Kafka")
    security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str = Field("PLAIN", description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER")
    sasl_username: str = Field("", description="the SASL user; for OAUTHBEARER the OAuth client id")
    sasl_password: SecretStr = Field(SecretStr(""), description="its password; for OAUTHBEARER the client secret")
    oauth_token_url: str = Field("", description="OAUTHBEARER: the OAuth token endpoint (client-credentials grant)")
    oauth_scope: str = Field("", description="OAUTHBEARER: the scope to ask for")
    ssl_cafile: Path | None = Field(None, description="PEM CA bundle that signs the brokers; none: the system CAs")
    ssl_certfile: Path | None = Field(None, description="PEM client certificate (mutual TLS)")
    ssl_keyfile: Path | None = Field(None, description="its private key")
    ssl_key_password: SecretStr = Field(SecretStr(""), description="the private key's password, if any")
    ssl_check_hostname: bool = True

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile", mode="before")
    @classmethod
    def _no_path(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("security_protocol")
    @classmethod
    def _protocol(cls, v: str) -> str:
        if v not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ValueError(f"kafka.security_protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, got {v!r}")
        return v

    @field_validator("sasl_mechanism")
    @classmethod
    def _mechanism(cls, v: str) -> str:
        if v not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"):
            raise ValueError(
                f"kafka.sasl_mechanism must be PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER, got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            if not self.sasl_username:
                raise ValueError(f"kafka.security_protocol {self.security_protocol} needs kafka.sasl_username")
            if self.sasl_mechanism == "OAUTHBEARER" and not self.oauth_token_url:
                raise ValueError("kafka.sasl_mechanism OAUTHBEARER needs kafka.oauth_token_url")
        if self.brokers not in (1, 3):
            raise ValueError(f"kafka.brokers must be 1 or 3, got {self.brokers}")
        return self

    @property
    def replicas(self) -> int:
        """Copies of each topic the fabric creates."""
        return self.replication_factor or min(self.brokers, 3)

    @property
    def min_insync(self) -> int:
        return self.min_insync_replicas or max(1, self.replicas - 1)

    @property
    def transactions(self) -> bool:
        """Whether stages that can run in transactions do (Tansu's are not used)."""
        return self.transactional and self.broker == "kafka"

    @property
    def fetch_wait_ms(self) -> int:
        """The fetch wait consumers use: ``fetch_max_wait_ms``, or the broker's default."""
        return self.fetch_max_wait_ms or (500 if self.broker == "kafka" else 5)

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        if v not in ("kafka", "tansu"):
            raise ValueError(f"kafka.broker must be 'kafka' or 'tansu', got {v!r}")
        return v

    @property
    def group_prefix(self) -> str:
        """Consumer groups are named per deployment, so two fabrics on one broker never mix."""
        return self.group or f"{self.topic_prefix}.fabric"


class RedisSettings(_Part):
    url: str = Field("redis://127.0.0.1:6379/0", description="with cluster: any one node of the cluster")
    cluster: bool = Field(False, description="the url is a node of a Redis Cluster (keys are hash-tagged per tenant)")
    key_prefix: str = "fabric"
    stream_window: int = Field(100, description="entries kept per subject for stream types")
    change_retention: int = Field(100_000, description="changes kept per tenant in the feed (resumable push)")
    change_retention_s: int = Field(86_400, description="and no older than this many seconds")
    timeout_s: float = Field(1.0, description="a Redis call not answered within this fails (the router answers 503)")

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis url must start with redis://, rediss:// or unix://, got {v!r}")
        return v


class ClickHouseSettings(_Part):
    url: str = "chdb://.fabric/chdb"
    database: str = "fabric"
    batch_rows: int = 5_000
    flush_interval_s: float = 1.0

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("chdb://", "http://", "https://")):
            raise ValueError(f"clickhouse url must be chdb:///dir (embedded) or http(s)://host:port, got {v!r}")
        return v

    @property
    def embedded(self) -> bool:
        return self.url.startswith("chdb://")

    @property
    def chdb_path(self) -> Path:
        """The engine directory: ``chdb:///abs/dir`` is absolute, ``chdb://rel/dir`` relative."""
        return Path(self.url.removeprefix("chdb://"))


class RouterSettings(_Part):
    host: str = "127.0.0.1"
    port: int = 8700
    max_body_bytes: int = 5 * 1024 * 1024
    max_events_per_request: int = Field(10_000, description="events (array items, NDJSON lines) in one POST")
    max_rejections_listed: int = Field(100, description="refused events named in an answer; the rest are counted")
    max_patterns: int = Field(100, description="patterns one subscription may give")
    max_pattern_chars: int = Field(200, description="characters in one subscription pattern")
    first_message_timeout_s: float = Field(10.0, description="a subscriber must send its request within this")
    ws_max_message_bytes: int = Field(64 * 1024, description="the largest WebSocket message a client may send")
    subscriber_buffer: int = Field(
        1_000, description="changes queued per subscriber; past it, it catches up from the feed"
    )
    subscriber_buffer_bytes: int = Field(
        1 << 20, description="bytes queued per subscriber; past it, it catches up from the feed"
    )
    produce_timeout_s: float = 10.0
    heartbeat_s: float = Field(15.0, description="idle subscriptions get a heartbeat message this often")
    ws_ping_timeout_s: float = Field(20.0, description="a subscriber that does not answer a ping is dropped")


class RateLimit(_Part):
    """A token bucket: ``rate`` requests per second on average, bursts up to ``burst``."""

    rate: float = 2_000.0
    burst: int = 4_000


class SecuritySettings(_Part):
    """Bearer tokens, access rules, rate limits and audit (docs/security.md)."""

    auth: str = Field("jwt", description="'jwt', or 'off' for benchmarks on loopback (every caller is dev_tenant)")
    dev_tenant: str = Field("dev", description="the tenant of every caller when auth is off")
    issuer: str = Field("fabric-dev", description="the 'iss' every token must carry")
    audience: str = Field("context-fabric", description="the 'aud' every token must carry")
    jwks_url: str = Field("", description="the issuer's JWKS (production); empty: the local dev key")
    dev_key_file: Path | None = Field(
        None, description="the dev issuer's ES256 key; default <data_dir>/keys/dev-es256.pem"
    )
    algorithms: tuple[str, ...] = ("ES256", "RS256")
    leeway_s: int = 5
    token_cache: int = Field(10_000, description="verified tokens remembered (until they expire)")
    token_cache_bytes: int = Field(16 << 20, description="and at most this many bytes of them")
    operator_tenant: str = Field(
        "platform", description="the only tenant whose tokens may carry the operator scope 'platform:admin'"
    )
    access_file: Path = Field(BUNDLED / "policies" / "access.yaml", description="ABAC rules")
    injection_file: Path | None = Field(
        BUNDLED / "policies" / "injection.yaml", description="bundled injection policies"
    )
    tenant_rate: RateLimit = RateLimit()
    token_rate: RateLimit = RateLimit(rate=1_000.0, burst=2_000)
    tenant_rates: dict[str, RateLimit] = Field(default_factory=dict, description="per-tenant overrides")
    audit_buffer: int = Field(100_000, description="audit records held while Kafka is unreachable")
    oidc_client_id: str = Field(
        "", description="the console's client at the issuer (authorization code with PKCE); empty: paste a token"
    )
    oidc_scope: str = Field("openid", description="the scopes the console asks the issuer for")
    oidc_resource: str = Field(
        "", description="a resource indicator (RFC 8707) the console names, if the issuer wants one"
    )

    @field_validator("dev_key_file", "injection_file", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("auth")
    @classmethod
    def _auth(cls, v: str) -> str:
        if v not in ("jwt", "off"):
            raise ValueError(f"security.auth must be 'jwt' or 'off', got {v!r}")
        return v

    def rate_for(self, tenant: str) -> RateLimit:
        return self.tenant_rates.get(tenant, self.tenant_rate)


class WorkerSettings(_Part):
    batch_max: int = 2_000
    batch_wait_ms: int = 5
    metrics_port: int = Field(8701, description="Prometheus port of the worker; 0 turns it off")
    log_level: str = "info"
    checkpoint_every_s: float = Field(
        5.0,
        description="how often the CEP stage checkpoints its state, at least; a checkpoint that takes "
        "long spaces the next (at most 1/20 of the time goes to them)",
    )
    commit_interval_ms: int = Field(
        100,
        ge=1,
        le=5000,
        description="transactional stages commit every this many ms (Kafka Streams' default under exactly-once); "
        "read_committed readers see records up to this much later",
    )
    processors: list[str] = Field(
        ["redact", "quality"],
        description="processors the route stage runs, in order: entry-point names (group fabric.processors) "
        "or dotted paths package.module:Class",
    )
    processor_options: dict[str, dict[str, Any]] = Field({}, description="options per processor name")


class WorkflowSettings(_Part):
    allowed_hosts: list[str] = Field(
        [], description="hosts (a name, *.domain or a CIDR) target systems may be at; empty: none (the operator's list)"
    )
    max_running: int = Field(100, ge=1, description="runs one worker executes at once; more wait in the topic")
    signature_header: str = Field("X-Fabric-Signature", description="the header HTTP actions carry their HMAC in")
    remember_finished: int = Field(
        100_000, ge=1000, description="finished runs per worker remembered in memory (the rest are in the changelog)"
    )


class Settings(BaseSettings):
    """Everything the fabric can be told, frozen after it is read."""

    model_config = SettingsConfigDict(env_prefix="FABRIC_", env_nested_delimiter="__", frozen=True, extra="ignore")

    data_dir: Path = Path(".fabric")
    patterns_file: Path | None = Field(
        BUNDLED / "patterns" / "library.yaml", description="CEP patterns the worker runs; empty: none"
    )
    max_event_bytes: int = Field(1024 * 1024, description="larger events are refused (HTTP 4xx) or dead-lettered")
    schemas_dir: Path = BUNDLED
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    router: RouterSettings = RouterSettings()
    worker: WorkerSettings = WorkerSettings()
    security: SecuritySettings = SecuritySettings()
    workflows: WorkflowSettings = WorkflowSettings()

    def to_env(self) -> dict[str, str]:
        """These settings as ``FABRIC_*`` variables, for a child process to read back."""
        env = {"FABRIC_DATA_DIR": str(self.data_dir), "FABRIC_SCHEMAS_DIR": str(self.schemas_dir),
               "FABRIC_MAX_EVENT_BYTES": str(self.max_event_bytes),
               "FABRIC_PATTERNS_FILE": str(self.patterns_file or "")}  # fmt: skip
        for part in ("kafka", "redis", "clickhouse", "router", "worker", "security", "workflows"):
            dumped = getattr(self, part).model_dump(mode="json")
            for name, value in dumped.items():
                value = getattr(getattr(self, part), name) if name.endswith("password") else value
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                text = json.dumps(value) if isinstance(value, dict | list) else str(value if value is not None else "")
                env[f"FABRIC_{part.upper()}__{name.upper()}"] = text
        return env

    @property
    def dev_key_file(self) -> Path:
        return self.security.dev_key_file or self.data_dir / "keys" / "dev-es256.pem"

    def topic(self, name: str) -> str:
        """Full topic name: ``topic('ingest')`` -> ``ctx.ingest``."""
        return f"{self.kafka.topic_prefix}.{name}"


_ALIASES = {
    "FABRIC_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "FABRIC_REDIS_URL": ("redis", "url"),
    "FABRIC_CLICKHOUSE_URL": ("clickhouse", "url"),
}


def load_settings(**overrides: Any) -> Settings:
    """Read the environment once. Short aliases apply when the nested form is not set."""
    nested: dict[str, dict[str, Any]] = {}
    for var, (part, field) in _ALIASES.items():
        if var in os.environ and f"FABRIC_{part.upper()}__{field.upper()}" not in os.environ:
            nested.setdefault(part, {})[field] = os.environ[var]
    try:
        base = Settings()
        if nested:
            parts = {
                p: type(getattr(base, p)).model_validate({**getattr(base, p).model_dump(), **v})
                for p, v in nested.items()
            }
            base = base.model_copy(update=parts)
        if overrides:
            base = base.model_copy(update=overrides)
        return base
    except ValueError as e:
        raise ConfigError(f"invalid FABRIC_* settings: {e}") from e

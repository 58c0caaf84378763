"""Apache Kafka for the embedded stack: KRaft mode, run with the JDK from the official
artifacts on Maven Central.

Maven resolves ``org.apache.kafka:kafka_2.13`` and its runtime dependencies once (checksums
verified by Maven) into ``~/.cache/context-fabric/kafka-<version>/lib`` (``$XDG_CACHE_HOME``
respected); later starts reuse that directory. The broker is one KRaft node that is its
own controller, data under ``<data_dir>/kafka``, heap and ports from ``kafka`` settings.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from fabric.errors import StackError
from fabric.settings import Settings

#: what the broker needs beside Kafka itself: a logging backend for its slf4j calls
_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>context-fabric</groupId><artifactId>kafka-runtime</artifactId><version>{version}</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{version}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.16</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
"""

_LOG4J = """Configuration:
  Appenders:
    Console: {name: STDOUT, PatternLayout: {pattern: "[%d] %p %m (%c)%n"}}
  Loggers:
    Root: {level: WARN, AppenderRef: [{ref: STDOUT}]}
    Logger:
      - {name: kafka.server.KafkaRaftServer, level: INFO}
"""


def cache_dir(version: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "context-fabric" / f"kafka-{version}"


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if not found:
        raise StackError(
            f"{name} is not on PATH: the Apache Kafka broker needs a JDK and Maven "
            f"(apt-get install {package}; 'make install' does it), or use --broker tansu"
        )
    return found


def resolve(version: str) -> Path:
    """The directory of Kafka's jars, resolved by Maven on first use."""
    home = cache_dir(version)
    lib = home / "lib"
    done = home / ".resolved"
    if done.exists():
        return lib
    mvn = _tool("mvn", "maven")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_POM.format(version=version))
    shutil.rmtree(lib, ignore_errors=True)
    done_run = subprocess.run(
        [mvn, "-q", "-B", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done_run.returncode != 0:
        tail = (done_run.stdout + done_run.stderr).strip().splitlines()[-3:]
        raise StackError(f"Maven could not resolve Apache Kafka {version}: {' | '.join(tail)}")
    done.write_text(version)
    return lib


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding, never starting
    with '-' (the storage tool would read it as an option; Kafka's own ids avoid it too)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


@dataclass(frozen=True)
class Node:
    """One KRaft node of the embedded cluster: a broker and a controller."""

    id: int
    host: str
    port: int
    controller_port: int
    home: Path


def nodes(settings: Settings) -> list[Node]:
    """The embedded cluster's nodes. One node listens on the bootstrap address, its
    controller on ``kafka.controller_port`` (or the next port); with ``kafka.brokers=3``
    the bootstrap lists the three brokers (or gives the first; the others follow two
    ports apart) and each controller listens one port above its broker."""
    k = settings.kafka
    addresses = [a.strip().rpartition(":") for a in k.bootstrap.split(",")]
    host, port = addresses[0][0], int(addresses[0][2])
    home = (settings.data_dir / "kafka").resolve()
    if k.brokers == 1:
        return [Node(1, host, port, k.controller_port or port + 1, home)]
    ports = [int(a[2]) for a in addresses] if len(addresses) == k.brokers else [port + 2 * i for i in range(k.brokers)]
    return [Node(i + 1, host, p, p + 1, home / f"node-{i + 1}") for i, p in enumerate(ports)]


def controller_port(settings: Settings) -> int:
    return nodes(settings)[0].controller_port


def node_config(settings: Settings, node: Node, extra: dict[str, str] | None = None) -> dict[str, str]:
    """``server.properties`` of one node; ``extra`` adds or replaces entries (listeners
    with TLS and SASL, for instance)."""
    k = settings.kafka
    cluster = nodes(settings)
    replicas = min(len(cluster), 3)
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node.id),
        "controller.quorum.voters": ",".join(f"{n.id}@{n.host}:{n.controller_port}" for n in cluster),
        "listeners": f"PLAINTEXT://{node.host}:{node.port},CONTROLLER://{node.host}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{node.host}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(node.home / "data"),
        "num.partitions": str(k.partitions),
        "default.replication.factor": str(replicas),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(max(1, replicas - 1)),
        "min.insync.replicas": str(max(1, replicas - 1)),
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": str(min(6000, k.session_timeout_ms)),
        # a killed node is fenced, and its partitions get new leaders, after 4 s (default 9 s)
        "broker.session.timeout.ms": "4000",
        "broker.heartbeat.interval.ms": "1000",
        # a crashed producer's open transaction is aborted within seconds, not a minute
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        # events over the fabric's limit must reach the worker to be dead-lettered with a reason
        "message.max.bytes": str(max(8 << 20, 4 * settings.max_event_bytes)),
    }
    return {**props, **(extra or {})}


def prepare(
    settings: Settings, node: Node | None = None, extra: dict[str, str] | None = None, scram: tuple[str, ...] = ()
) -> list[str]:
    """Resolve the jars, write the node's configuration, format its storage once; the
    command that runs the broker. ``scram`` adds SCRAM users at format time
    (``SCRAM-SHA-256=[name=alice,password=...]``)."""
    java = _tool("java", "openjdk-17-jre-headless")
    k = settings.kafka
    lib = resolve(k.version)
    node = node or nodes(settings)[0]
    data = node.home / "data"
    node.home.mkdir(parents=True, exist_ok=True)
    props = node.home / "server.properties"
    props.write_text("".join(f"{key}={value}\n" for key, value in node_config(settings, node, extra).items()))
    (node.home / "log4j2.yaml").write_text(_LOG4J)
    classpath = f"{lib}/*"
    if not (data / "meta.properties").exists():
        shutil.rmtree(data, ignore_errors=True)
        quorum = ["--standalone"] if k.brokers == 1 else []
        users = [arg for user in scram for arg in ("--add-scram", user)]
        fmt = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id(settings),
             "-c", str(props), *quorum, *users],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if fmt.returncode != 0:
            raise StackError(f"cannot format Kafka's storage in {data}: {fmt.stderr.strip()[-300:]}")
    return [
        java, f"-Xms{k.heap_mb}m", f"-Xmx{k.heap_mb}m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={node.home / 'log4j2.yaml'}", "-cp", classpath, "kafka.Kafka", str(props),
    ]  # fmt: skip


def cluster_id(settings: Settings) -> str:
    """The cluster's id, made once and kept under the data dir: every node is formatted with it."""
    path = (settings.data_dir / "kafka" / "cluster.id").resolve()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_cluster_id())
    return path.read_text().strip()

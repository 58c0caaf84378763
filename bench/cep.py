"""CEP matcher alone: events/s through ``Matcher.process`` with 10 and 100 patterns active,
on one core, beside Esper (the peer: the same library in EPL, the same event file, one
thread; ``bench/esper``, built by Maven on first use) in the same run. The whole worker
with CEP comes with the CEP stage (``bench worker``)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from bench.env import RESULTS, save
from bench.plot import throughput_over_time
from fabric.cep.matcher import Matcher
from fabric.cep.patterns import compile_pattern
from fabric.cep.state import Position

LIBRARY = Path(__file__).resolve().parent.parent / "fabric" / "schemas" / "patterns" / "library.yaml"
ESPER = Path(__file__).resolve().parent / "esper"
COLUMNS = ["type", "subject", "tenant", "service", "level", "name", "value", "table", "change", "time"]


SERVICES = 200


def restricted(where: Any, share: list[str]) -> Any:
    return {**where, "data.service": {"$in": share}}


def patterns(n: int) -> list[Any]:
    """n patterns: n/5 copies of the library, copy c restricted to its own share of the
    services (svc-k with k % copies == c), so that each event concerns one copy of each."""
    base = yaml.safe_load(LIBRARY.read_text())["patterns"]
    copies = max(1, n // len(base))
    out = []
    for i in range(n):
        c = i // len(base)
        share = [f"svc-{k}" for k in range(c % copies, SERVICES, copies)]
        spec = json.loads(json.dumps(base[i % len(base)]))
        spec["name"] = f"{spec['name']}-{i}"
        spec.pop("description", None)
        if "sequence" in spec:
            for step in spec["sequence"]["steps"]:
                step["where"] = restricted(step["where"], share)
        elif "absence" in spec:
            for part in ("first", "then_not"):
                spec["absence"][part] = restricted(spec["absence"][part], share)
        else:
            spec["aggregate"]["where"] = restricted(spec["aggregate"]["where"], share)
        out.append(compile_pattern(spec))
    return out


def events(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    t = 1_700_000_000_000
    for i in range(n):
        t += rnd.randint(0, 4)  # ~500 events per simulated second
        jitter = rnd.randint(-500, 0)  # a little out of order, within the lateness
        svc = f"svc-{rnd.randrange(SERVICES)}"
        r = rnd.random()
        if r < 0.5:
            ev = {
                "type": "log.entry",
                "data": {"service": svc, "level": "ERROR" if r < 0.1 else "INFO", "table": "orders"},
            }
        elif r < 0.8:
            ev = {
                "type": "metric.sample",
                "subject": svc,
                "data": {
                    "service": svc,
                    "name": "latency_ms" if r < 0.7 else "heartbeat",
                    "value": rnd.uniform(50, 900),
                },
            }
        elif r < 0.95:
            ev = {
                "type": "page.updated",
                "subject": f"page-{rnd.randrange(500)}",
                "data": {"page": "p", "service": svc},
            }
        elif r < 0.98:
            ev = {"type": "deploy.finished", "data": {"service": svc}}
        else:
            ev = {"type": "schema.altered", "data": {"table": "orders", "change": "altered", "service": svc}}
        ev.update(id=f"e{i}", tenant="acme", time=t + jitter)
        ev.setdefault("subject", svc)
        out.append(ev)
    return out


def write_tsv(evs: list[dict[str, Any]], path: Path) -> None:
    """The event file Esper reads: the envelope fields and ``data`` flattened, one per line."""
    rows = ["\t".join(COLUMNS)]
    for ev in evs:
        flat = {**ev.get("data", {}), **{k: v for k, v in ev.items() if k != "data"}}
        rows.append("\t".join("" if flat.get(c) is None else str(flat[c]) for c in COLUMNS))
    path.write_text("\n".join(rows) + "\n")


def esper_classpath() -> str:
    """Compile the peer and resolve Esper's jars (Maven, once; cached under bench/esper/target)."""
    target = ESPER / "target"
    done = target / ".built"
    if not done.exists() or done.stat().st_mtime < max(p.stat().st_mtime for p in ESPER.rglob("*.java")):
        mvn = shutil.which("mvn")
        if not mvn or not shutil.which("java"):
            raise SystemExit("the Esper peer needs a JDK and Maven (make install puts them in place)")
        built = subprocess.run([mvn, "-q", "-B", "-f", str(ESPER / "pom.xml"), "compile", "dependency:copy-dependencies",
                                f"-DoutputDirectory={target / 'lib'}"], capture_output=True, text=True, timeout=900)  # fmt: skip
        if built.returncode:
            raise SystemExit(f"Maven could not build the Esper peer: {(built.stdout + built.stderr)[-2000:]}")
        done.write_text("ok")
    return f"{target / 'classes'}:{target / 'lib' / '*'}"


def esper(evs: list[dict[str, Any]], n_patterns: int, workdir: Path) -> dict[str, Any]:
    path = workdir / f"cep-events-{len(evs)}.tsv"
    write_tsv(evs, path)
    out = subprocess.run(
        ["java", "-Xmx2g", "-XX:+UseParallelGC", "-cp", esper_classpath(), "fabric.bench.EsperPeer", str(path),
         str(n_patterns // 5), str(SERVICES)], capture_output=True, text=True, timeout=1800, check=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


async def run(quick: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {}
    timelines: dict[str, list[tuple[float, float]]] = {}
    workdir = Path(".fabric/bench/cep").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for n_patterns, n_events in ((10, 50_000 if quick else 200_000), (100, 10_000 if quick else 40_000)):
        evs = events(n_events)
        m = Matcher(patterns(n_patterns))
        composites = 0
        started = last = time.perf_counter()
        points = []
        for i, ev in enumerate(evs):
            composites += len(m.process(ev, Position("ctx.log", i % 4, i)))
            if i % 5000 == 4999:
                now = time.perf_counter()
                points.append((round(now - started, 3), round(5000 / (now - last), 1)))
                last = now
        elapsed = time.perf_counter() - started
        name = f"matcher, {n_patterns} patterns"
        results[name] = {"events": n_events, "seconds": round(elapsed, 3), "events_per_s": round(n_events / elapsed, 1),
                         "outputs": composites, "state_entries": sum(r.state_size() for r in m.runs.values())}  # fmt: skip
        timelines[name] = points
        print(f"  cep {name:<24} {results[name]['events_per_s']:>10} events/s, {composites} outputs", flush=True)
        peer = esper(evs, n_patterns, workdir)
        results[name]["esper"] = peer
        results[name]["ratio_to_esper"] = round(results[name]["events_per_s"] / peer["events_per_s"], 3)
        print(f"  cep {'esper, ' + str(n_patterns) + ' patterns':<24} {peer['events_per_s']:>10} events/s, "
              f"{peer['outputs']} outputs; fabric/esper {results[name]['ratio_to_esper']}", flush=True)  # fmt: skip
    summary = {k: {"events_per_s": v["events_per_s"], "esper_events_per_s": v["esper"]["events_per_s"],
                   "ratio_to_esper": v["ratio_to_esper"]} for k, v in results.items()}  # fmt: skip
    save("cep", {"summary": summary, "targets": {"matcher, 10 patterns": 150_000, "matcher, 100 patterns": 100_000},
                 "runs": results})  # fmt: skip
    throughput_over_time(timelines, "CEP matcher alone, one core", RESULTS / "cep.png", "events/s")
    return {"summary": summary}

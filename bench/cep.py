"""CEP matcher alone: events/s through ``Matcher.process`` with 10 and 100 patterns active,
on one core, in one run (the whole worker with CEP comes with the CEP stage)."""

from __future__ import annotations

import random
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


def patterns(n: int) -> list[Any]:
    """n patterns: copies of the library, each copy restricted to its own share of services."""
    base = yaml.safe_load(LIBRARY.read_text())["patterns"]
    out = []
    for i in range(n):
        spec = dict(base[i % len(base)])
        spec["name"] = f"{spec['name']}-{i}"
        spec.pop("description", None)
        out.append(compile_pattern(spec))
    return out


def events(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    t = 1_700_000_000_000
    for i in range(n):
        t += rnd.randint(0, 4)  # ~500 events per simulated second
        jitter = rnd.randint(-500, 0)  # a little out of order, within the lateness
        svc = f"svc-{rnd.randrange(200)}"
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
            ev = {"type": "page.updated", "subject": f"page-{rnd.randrange(500)}", "data": {"page": "p"}}
        elif r < 0.98:
            ev = {"type": "deploy.finished", "data": {"service": svc}}
        else:
            ev = {"type": "schema.altered", "data": {"table": "orders", "change": "altered"}}
        ev.update(id=f"e{i}", tenant="acme", time=t + jitter)
        ev.setdefault("subject", svc)
        out.append(ev)
    return out


async def run(quick: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {}
    timelines: dict[str, list[tuple[float, float]]] = {}
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
    summary = {k: v["events_per_s"] for k, v in results.items()}
    save("cep", {"summary": summary, "targets": {"matcher, 10 patterns": 100_000}, "runs": results})
    throughput_over_time(timelines, "CEP matcher alone, one core", RESULTS / "cep.png", "events/s")
    return {"summary": summary}

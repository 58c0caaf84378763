"""The table of every speed target: target, measured, floor or peer (measured in the same run),
ratio, met. Read from the results the benchmarks wrote; ``python -m bench report`` prints
it and writes ``summary.json``, ``summary.md`` (the README's table) and ``summary.png``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.env import RESULTS, machine


@dataclass
class Row:
    figure: str
    broker: str
    target: str
    measured: float | None
    unit: str
    peer_name: str
    peer: float | None
    met: bool | None
    #: what else the run measured, when it is not a floor to divide by
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.measured is None or not self.peer:
            return None
        return round(self.measured / self.peer, 2)


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _le(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


def _ge(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound


def push_rows(broker: str) -> list[Row]:
    data = _load(f"push_path-{broker}")
    if not data or "rates" not in data:
        return []
    rows = []
    for rate, r in data["rates"].items():
        frame, floor = r["stages"]["frame"], r["stages"]["floor_two_hops"]
        rows += [
            Row(f"push p50, 1 sub, {int(rate):,}/s, CEP on", broker, "≤ 10 ms", frame["p50_ms"], "ms",
                "two plain hops p50", floor["p50_ms"], _le(frame["p50_ms"], 10)),
            Row(f"push p99, 1 sub, {int(rate):,}/s, CEP on", broker, "≤ 50 ms", frame["p99_ms"], "ms",
                "two plain hops p99", floor["p99_ms"], _le(frame["p99_ms"], 50)),
        ]  # fmt: skip
    return rows


def fanout_rows(broker: str) -> list[Row]:
    data = _load(f"push-{broker}")
    if not data:
        return []
    runs = data["runs"]
    hundred = next((r for r in runs if r["subscribers"] == 100 and r["rate"] == 1000), None)
    best = max(runs, key=lambda r: r["changes_per_s"])
    rows = [
        Row(f"fan-out: changes/s delivered by one router ({best['subscribers']} subs @ {best['rate']:,}/s)", broker,
            "≥ 100,000/s", best["changes_per_s"], "/s", "", None, _ge(best["changes_per_s"], 100_000),
            f"{best['frames_per_s']:,} frames/s; {best['delivered_fraction']:.0%} delivered; router "
            f"{best['router_cores']} cores"),
    ]  # fmt: skip
    if hundred:
        rows += [
            Row("fan-out: 100 subs @ 1,000/s, share delivered", broker, "all (1.0)", hundred["delivered_fraction"], "",
                "", None, hundred["delivered_fraction"] == 1.0, f"{hundred['lagging_notices']} lagging notices"),
            Row("fan-out: 100 subs @ 1,000/s, p99", broker, "≤ 100 ms", hundred["p99_ms"], "ms", "", None,
                _le(hundred["p99_ms"], 100), f"{hundred['client_processes']} client processes used "
                f"{hundred['client_cores']} cores, the router {hundred['router_cores']}"
                + "".join(f", {k} {v}" for k, v in hundred.get("other_cores", {}).items())),
        ]  # fmt: skip
    return rows


def worker_rows(broker: str) -> list[Row]:
    data = _load(f"worker-{broker}")
    if not data:
        return []
    s = data["summary"]
    plain = s.get("plain aiokafka getmany->send")
    one = s.get("fabric worker, 1 process")
    cep = s.get("fabric worker, 1 process, with CEP (5 library patterns)")
    return [
        Row("worker, 1 process, route + materialize", broker, "≥ 40,000/s, ≥ 0.45 × plain", one, "/s",
            "plain aiokafka loop", plain, _ge(one, 40_000) and _ge((one or 0) / (plain or 1), 0.45)),
        Row("worker, 1 process, with CEP", broker, "≥ 25,000/s", cep, "/s", "plain aiokafka loop", plain,
            _ge(cep, 25_000)),
    ]  # fmt: skip


def cep_rows() -> list[Row]:
    data = _load("cep")
    if not data:
        return []
    rows = []
    for name, bound in (("matcher, 10 patterns", 150_000), ("matcher, 100 patterns", 100_000)):
        r = data["summary"].get(name)
        if isinstance(r, dict):
            rows.append(Row(f"CEP {name}, one core", "-", f"≥ {bound:,}/s", r["events_per_s"], "/s",
                            "Esper 8.9, same patterns and events", r["esper_events_per_s"], _ge(r["events_per_s"], bound)))  # fmt: skip
    return rows


def idle_rows() -> list[Row]:
    data = _load("idle")
    if not data:
        return []
    rows = []
    for r in data["runs"]:
        floor = r.get("stack_alone_cores")
        fabric = round(sum(v for k, v in r["per_process"].items() if k not in ("broker", "redis")), 3)
        rows.append(Row(f"idle, whole fabric over {data['seconds']:.0f} s (fetch wait {r['fetch_max_wait_ms']} ms)",
                        r["broker"], "≤ 0.03 core", r["cores"], "cores", "broker + Redis alone, before", floor,
                        _le(r["cores"], 0.03), f"the fabric's own processes {fabric}"))  # fmt: skip
    return rows


def pull_rows(broker: str) -> list[Row]:
    data = _load(f"pull-{broker}")
    if not data:
        return []
    fab, naive = data["summary"]["fabric router"], data["summary"]["naive starlette+redis-py"]
    return [
        Row("pull p99 at 5,000/s (wrk; worker + sink beside)", broker, "≤ 2 ms", fab["p99_ms_at_5000"], "ms",
            "naive Starlette + redis-py", naive["p99_ms_at_5000"], _le(fab["p99_ms_at_5000"], 2)),
        Row("pull: highest paced rate at p99 ≤ 5 ms", broker, "≥ 10,000/s", fab["max_rate_p99_le_5ms"], "/s",
            "naive Starlette + redis-py", naive["max_rate_p99_le_5ms"], _ge(fab["max_rate_p99_le_5ms"], 10_000)),
        Row("pull: unpaced throughput (p99 in the JSON)", broker, "-", fab["unpaced_rate"], "/s",
            "naive Starlette + redis-py", naive["unpaced_rate"], None),
    ]  # fmt: skip


def rows() -> list[Row]:
    out: list[Row] = []
    for broker in ("kafka", "tansu"):
        out += push_rows(broker) + fanout_rows(broker) + worker_rows(broker)
    out += cep_rows() + idle_rows()
    for broker in ("kafka", "tansu"):
        out += pull_rows(broker)
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:g}"


def markdown(table: list[Row]) -> str:
    m = machine()
    lines = [
        f"Measured {m['when']} on {m['cpus']} cores, Python {m['python']}, {m['platform']}.",
        "",
        "| figure | broker | target | measured | floor or peer (same run) | ratio | met | also measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        peer = f"{r.peer_name} {_fmt(r.peer)}" if r.peer_name else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        lines.append(f"| {r.figure} | {r.broker} | {r.target} | {_fmt(r.measured)} {r.unit} | {peer} | "
                     f"{_fmt(r.ratio)} | {met} | {r.note} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(table: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in table if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(shown) + 1.5))
    labels = [f"{r.figure} [{r.broker}]" for r in shown]
    colors = ["tab:green" if r.met else "tab:red" if r.met is False else "tab:grey" for r in shown]
    ax.barh(range(len(shown)), [r.ratio or 0 for r in shown], color=colors)
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("measured / floor or peer (log); green: target met, red: not")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


async def run(quick: bool = False) -> dict[str, Any]:
    table = rows()
    for r in table:
        met = {True: "met", False: "NOT MET", None: ""}[r.met]
        peer = f"{r.peer_name} {_fmt(r.peer)}" if r.peer_name else ""
        print(f"  {r.figure[:62]:<62} {r.broker:<6} target {r.target:<26} measured {_fmt(r.measured):>9} {r.unit:<5} "
              f"{peer[:48]:<48} ratio {_fmt(r.ratio):>6}  {met}" + (f"  ({r.note})" if r.note else ""), flush=True)  # fmt: skip
    (RESULTS / "summary.md").write_text(markdown(table))
    (RESULTS / "summary.json").write_text(
        json.dumps({"machine": machine(), "rows": [{**asdict(r), "ratio": r.ratio} for r in table]}, indent=2)
    )
    plot(table, RESULTS / "summary.png")
    return {"summary": {"rows": len(table), "met": sum(1 for r in table if r.met)}}

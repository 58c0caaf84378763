"""``python -m bench [NAME ...|all] [--quick] [--broker kafka|tansu|both]``: results in bench/results/.

``all`` (what ``make bench`` runs) measures every speed target: the push path, fan-out,
worker and pull on each broker, the CEP matcher beside Esper, idle CPU, then prints the
table of target, measured, floor or peer and ratio (``report``)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os

import uvloop

#: measured on each broker (BENCH_BROKER)
PER_BROKER = ["push_path", "push", "worker", "pull"]
ALL = [*PER_BROKER, "cep", "idle", "report"]
OTHERS = ["ingest", "mcp", "abuse", "brokers", "cep_scale", "workflows"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("which", nargs="*", default=["all"], choices=[*ALL, *OTHERS, "all"])
    parser.add_argument("--quick", action="store_true", help="fewer rates and shorter runs (a smoke test)")
    parser.add_argument("--broker", choices=["kafka", "tansu", "both"], default=None,
                        help="for the per-broker benchmarks (default: both with 'all', else BENCH_BROKER or kafka)")  # fmt: skip
    args = parser.parse_args()
    names = ALL if "all" in args.which else args.which
    broker = args.broker or ("both" if "all" in args.which else os.environ.get("BENCH_BROKER", "kafka"))
    brokers = ["kafka", "tansu"] if broker == "both" else [broker]
    for name in names:
        for b in brokers if name in PER_BROKER else [None]:
            if b:
                os.environ["BENCH_BROKER"] = b
            print(f"== {name}" + (f" ({b})" if b else ""), flush=True)
            module = importlib.import_module(f"bench.{name}")
            result = (
                uvloop.run(module.run(quick=args.quick))
                if name not in ("worker", "cep_scale")
                else asyncio.run(module.run(quick=args.quick))
            )
            print(json.dumps(result.get("summary", {}), indent=2, default=str)[:3000], flush=True)


if __name__ == "__main__":
    main()

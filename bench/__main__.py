"""``python -m bench [pull|push|push_path|worker|ingest|cep|mcp|abuse|idle|brokers|cep_scale|all] [--quick]``: results in bench/results/."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json

import uvloop

ALL = ["pull", "push", "worker", "ingest", "cep", "mcp"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "which", nargs="*", default=["all"], choices=[*ALL, "abuse", "idle", "brokers", "cep_scale", "push_path", "all"]
    )
    parser.add_argument("--quick", action="store_true", help="fewer rates and shorter runs (a smoke test)")
    args = parser.parse_args()
    names = ALL if "all" in args.which else args.which
    for name in names:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        result = (
            uvloop.run(module.run(quick=args.quick))
            if name not in ("worker", "cep_scale")
            else asyncio.run(module.run(quick=args.quick))
        )
        print(json.dumps(result.get("summary", {}), indent=2), flush=True)


if __name__ == "__main__":
    main()

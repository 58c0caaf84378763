"""CEP scale-out: events/s through route, materialize and CEP with 1, 2 and 3 worker
processes on Apache Kafka (see ``bench.worker.run_cep_scale``)."""

from __future__ import annotations

from typing import Any

from bench.worker import run_cep_scale


async def run(quick: bool = False) -> dict[str, Any]:
    return await run_cep_scale(quick)

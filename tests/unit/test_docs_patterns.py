"""Every example in docs/patterns.md runs: its events produce exactly the composites shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fabric.testing import composites, ev, run_patterns

DOC = (Path(__file__).resolve().parents[2] / "docs" / "patterns.md").read_text()
BLOCKS = {(m.group(1), m.group(2)): m.group(3) for m in re.finditer(r"```yaml (\w+): (\w+)\n(.*?)```", DOC, re.S)}
NAMES = sorted({name for _, name in BLOCKS})


def test_the_doc_has_examples() -> None:
    assert NAMES == ["absence", "aggregate", "sequence"]


@pytest.mark.parametrize("name", NAMES)
def test_example(name: str) -> None:
    events = [
        ev(e["type"], e["at"], subject=e.get("subject", "s"), **e.get("data", {}))
        for e in yaml.safe_load(BLOCKS[("events", name)])
    ]
    out = composites(run_patterns(BLOCKS[("example", name)], events, flush_to_ms=10**9))
    # the key as the composite's data.key shows it: the tenant is the matcher's, not the user's
    shown = [{"pattern": c.pattern, "key": c.key.partition("|")[2], "events": len(c.events)} for c in out]
    assert shown == yaml.safe_load(BLOCKS[("composites", name)])

"""The processor door and the two built-in processors, on the route stage's batch logic."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import pytest
from aiokafka import ConsumerRecord

from fabric.errors import ConfigError
from fabric.events.catalogue import Catalogue
from fabric.events.codecs import decode_typed
from fabric.events.envelope import make_event, to_json
from fabric.pipeline.materialize import change_from_headers
from fabric.pipeline.processors import Event, Processor, load_processors
from fabric.pipeline.quality import Quality, score, served_quality
from fabric.pipeline.redact import MAX_CANDIDATES, Redaction
from fabric.pipeline.route import Routing
from fabric.settings import Settings


def record(value: bytes, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("ctx.ingest", 0, offset, 0, 0, b"k", value, None, 1, len(value), [])


def saas(fields: dict[str, Any], subject: str = "acc-1", **attrs: Any) -> bytes:
    data = {"system": "crm", "object": "account", "record_id": subject, "fields": fields}
    return to_json(make_event("saas.account.updated", subject, data, tenant="acme", source="crm", **attrs))


def log_entry(message: str, **attrs: Any) -> bytes:
    data = {"service": "api", "level": "INFO", "message": message}
    return to_json(make_event("log.entry", "api", data, tenant="acme", source="logs", **attrs))


def served(out: Any) -> dict[str, Any]:
    return orjson.loads(dict(out.headers)["fabric_cache_json"])


def routing(catalogue: Catalogue, processors: list[str], **options: Any) -> Routing:
    settings = Settings.model_validate({"worker": {"processors": processors, "processor_options": options}})
    return Routing(settings, catalogue)


# -- the door ---------------------------------------------------------------------------


class Shout(Processor):
    name = "shout"

    def process(self, events: list[Event]) -> None:
        for ev in events:
            if ev.data.get("message") == "drop me":
                ev.drop()
            elif ev.data.get("message") == "refuse me":
                ev.dead_letter("shout refuses this one")
            elif ev.data.get("message") == "explode":
                raise RuntimeError("boom")
            elif ev.data.get("message") == "break the schema":
                ev.data = {**ev.data, "level": 42}
            else:
                ev.data = {**ev.data, "message": ev.data["message"].upper()}
                ev.extensions["shouted"] = True


def test_a_processor_changes_filters_and_dead_letters_and_the_batch_goes_on(catalogue: Catalogue) -> None:
    r = routing(catalogue, ["tests.unit.test_processors:Shout"])
    records = [record(log_entry(m), i) for i, m in enumerate(
        ["hello", "drop me", "refuse me", "explode", "break the schema", "world"])]  # fmt: skip
    result = r.route(records)
    messages = [decode_typed(o.value, catalogue)[1]["data"]["message"] for o in result.ok]
    assert messages == ["HELLO", "WORLD"]
    assert served(result.ok[0])["shouted"] is True and served(result.ok[0])["data"]["message"] == "HELLO"
    assert result.dropped == 1
    reasons = {dict(d.headers)["fabric_original_offset"]: dict(d.headers)["fabric_error_reason"] for d in result.dead}
    assert reasons[b"2"] == b"shout refuses this one"
    assert reasons[b"3"].startswith(b"processor shout failed: RuntimeError: boom")
    assert b"after the processors" in reasons[b"4"] and dict(result.dead[-1].headers)["fabric_error_pointer"]


def test_processors_run_in_the_declared_order(catalogue: Catalogue) -> None:
    # redact first: the quality processor then scores the masked event; both extensions land
    r = routing(catalogue, ["redact", "quality"])
    out = r.route([record(log_entry("mail bob@example.com now"))]).ok[0]
    event = served(out)
    assert event["data"]["message"] == "mail [email] now" and event["redacted"] == 1
    assert 0 < event["quality"] <= 1


def test_unknown_or_wrong_processors_are_config_errors(catalogue: Catalogue) -> None:
    for name, problem in [("nope", "no processor named 'nope'"), ("json:loads", "not a fabric.pipeline"),
                          ("no.such.module:X", "cannot load")]:  # fmt: skip
        with pytest.raises(ConfigError, match=problem):
            load_processors(Settings.model_validate({"worker": {"processors": [name]}}), catalogue)


def test_the_built_ins_are_entry_points(catalogue: Catalogue) -> None:
    built = load_processors(Settings(), catalogue)
    assert [type(p) for p in built] == [Redaction, Quality]


# -- redaction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("write to ann.lee+crm@mail.example.co.uk today", "write to [email] today"),
        ("call +44 20 7946 0958 or (555) 123-4567", "call [phone] or [phone]"),
        ("card 4111 1111 1111 1111 on file", "card [card] on file"),
        ("ssn 123-45-6789", "ssn [national_id]"),
        ("id 11010519491231002X", "id [national_id]"),
        ("key sk_live_4eC39HqLyjWDarjtT1zdp7dc", "key [secret]"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws [secret]"),
        ("auth Bearer abcdefghijklmnopqrstuvwxyz012345", "auth [secret]"),
    ],
)
def test_redaction_masks_pii_and_secrets(catalogue: Catalogue, text: str, masked: str) -> None:
    out = routing(catalogue, ["redact"]).route([record(log_entry(text))]).ok[0]
    assert served(out)["data"]["message"] == masked
    assert decode_typed(out.value, catalogue)[1]["data"]["message"] == masked  # the topic holds no PII


@pytest.mark.parametrize(
    "text",
    [
        "GET /orders 200 in 12 ms at 2026-11-22T10:00:00Z",
        "host 192.168.100.200 port 8080",
        "card-like 4111 1111 1111 1112 fails Luhn",
        "id 110105194912310021 has a wrong check digit",
        "version 1.2.3 of orders-api",
    ],
)
def test_redaction_leaves_what_is_not_pii(catalogue: Catalogue, text: str) -> None:
    out = routing(catalogue, ["redact"]).route([record(log_entry(text))]).ok[0]
    assert served(out)["data"]["message"] == text and "redacted" not in served(out)


def test_redaction_masks_secret_keys_whole_and_counts_fields(catalogue: Catalogue) -> None:
    fields = {"owner": "ann@example.com", "api_key": "not-obviously-secret", "note": "fine", "tier": "gold"}
    out = routing(catalogue, ["redact"]).route([record(saas(fields))]).ok[0]
    event = served(out)
    assert event["data"]["fields"] == {"owner": "[email]", "api_key": "[redacted]", "note": "fine", "tier": "gold"}
    assert event["redacted"] == 2


def test_redaction_rules_by_context_type_and_sensitivity(catalogue: Catalogue) -> None:
    rules = [{"context_types": ["SaaS*"], "sensitivity": ["confidential", "restricted"], "detect": ["email"]}]
    r = routing(catalogue, ["redact"], redact={"rules": rules})
    mail = {"owner": "ann@example.com"}
    result = r.route([record(saas(mail, sensitivity="confidential")), record(saas(mail, sensitivity="internal"), 1),
                      record(log_entry("ann@example.com", sensitivity="restricted"), 2)])  # fmt: skip
    assert [served(o)["data"].get("fields", served(o)["data"].get("message")) for o in result.ok] == [
        {"owner": "[email]"}, {"owner": "ann@example.com"}, "ann@example.com",
    ]  # fmt: skip


def test_bad_redaction_rules_name_the_field(catalogue: Catalogue) -> None:
    with pytest.raises(ConfigError, match=r"rules\[0\]\.detect\[0\]"):
        routing(catalogue, ["redact"], redact={"rules": [{"detect": ["iban"]}]})


# -- quality ----------------------------------------------------------------------------


def test_quality_scores_completeness_reliability_and_warnings(catalogue: Catalogue) -> None:
    r = routing(catalogue, ["quality"], quality={"sources": {"crm": 0.5}})
    full = {"service": "api", "level": "INFO", "message": "m", "logger": "", "attributes": {"k": "v"}}
    event = make_event("log.entry", "api", full, tenant="acme", source="logs")
    timed = msgspec.structs.replace(event, time=datetime(2026, 1, 1, tzinfo=UTC))
    result = r.route([record(to_json(timed)), record(log_entry("m"), 1), record(saas({}), 2)])
    q = [served(o)["quality"] for o in result.ok]
    names = [f["name"] for f in catalogue.schemas.data_raw("LogEntry")["fields"]]
    assert q[0] == score(4 / len(names), 1.0, 0)  # an empty logger counts as missing
    assert q[1] < q[0]  # fewer fields, and no event time of its own (a warning)
    assert q[2] == score(3 / 5, 0.5, 1)
    change = change_from_headers("LogEntry", "stream", dict(result.ok[0].headers), 0)
    assert change is not None and change.quality == q[0]


def test_served_quality_falls_past_the_ttl(catalogue: Catalogue) -> None:
    ct = dataclasses.replace(catalogue["Metric"], ttl_s=60)
    assert served_quality(0.8, 30_000, ct) == 0.8
    assert served_quality(0.8, 120_000, ct) == 0.4
    assert served_quality(None, 0, ct) is None


def test_quality_options_are_checked(catalogue: Catalogue) -> None:
    with pytest.raises(ConfigError, match=r"sources\.crm"):
        routing(catalogue, ["quality"], quality={"sources": {"crm": 2}})
    with pytest.raises(ConfigError, match=r"quality: bogus"):
        routing(catalogue, ["quality"], quality={"bogus": 1})


@pytest.mark.parametrize(
    "data",
    [
        {"m": "x" * 1_000_000},  # a backtracking regex spends seconds or minutes on these
        {"m": "12345 " * 160_000},
        {"m": "a@b.co " * 140_000},
        {f"k{i}": "ann@x.org" for i in range(50_000)},
    ],
    ids=["letters", "digit-groups", "emails", "many-fields"],
)
def test_redaction_of_hostile_input_is_bounded(catalogue: Catalogue, data: dict[str, Any]) -> None:
    r = Redaction(Settings(), catalogue, {})
    started = time.monotonic()
    masked, n = r.mask("LogEntry", "internal", orjson.dumps(data), data)
    # a hang detector, not a speed claim (bench/ measures speed): linear work takes ~0.1 s here
    assert time.monotonic() - started < 5
    values = list(masked.values())
    if n:  # past the candidate budget, the remaining strings are masked whole
        assert all(v.startswith("[") or "[email]" in v or "[phone]" in v for v in values)
    assert n <= len(values)


def test_candidate_budget_masks_the_rest_whole(catalogue: Catalogue) -> None:
    r = Redaction(Settings(), catalogue, {})
    data = {f"k{i}": f"mail u{i}@x.org" for i in range(MAX_CANDIDATES + 5)}
    masked, n = r.mask("LogEntry", "internal", orjson.dumps(data), data)
    assert n == len(data)
    assert masked["k0"] == "mail [email]" and masked[f"k{MAX_CANDIDATES + 4}"] == "[redacted]"


def test_a_json_escape_next_to_pii_does_not_hide_it(catalogue: Catalogue) -> None:
    r = Redaction(Settings(), catalogue, {})
    for text, masked in [("call\n555-123-4567", "call\n[phone]"), ('"ann@x.org"', '"[email]"'),
                         ("tab\t4111 1111 1111 1111", "tab\t[card]")]:  # fmt: skip
        data = {"message": text}
        assert r.mask("LogEntry", "internal", orjson.dumps(data), data) == ({"message": masked}, 1)

"""The demo's reaction: when the latency-SLO composite fires for a service, a workflow
opens an incident in a ticket desk (HTTP) and asks an "ops" MCP server for the service's
last deploy, in parallel, then publishes the incident back into the fabric as context
(``saas.incident.opened``) that the copilot sees; the run's outcome (``workflow.completed``)
is context too.

Both systems are loopback servers this module starts in threads: the desk is a plain
HTTP server, the ops server is built with the official MCP SDK.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from fabric.dev.procs import free_port
from fabric.kafka.compacted import publish
from fabric.settings import Settings
from fabric.workflows.source import WORKFLOW
from fabric.workflows.spec import compile_workflow
from fabric.workflows.systems import SYSTEM

WORKFLOW_SPEC: dict[str, Any] = {
    "name": "latency-incident", "version": 1,
    "description": "A service's p95 latency is over its SLO: open an incident with the last deploy attached.",
    "triggers": [{"event": "composite.latency-slo-breach"}],
    "phases": [
        {"id": "investigate", "type": "parallel", "steps": [
            {"id": "ticket", "system": "desk", "timeout": "5s", "retry": {"max_attempts": 3, "backoff": "200ms"},
             "http": {"path": "/incidents", "body": {"service": "{{ trigger.data.key }}",
                                                     "aggregates": "{{ trigger.data.aggregates }}"}}},
            {"id": "deploy", "system": "ops", "timeout": "5s",
             "mcp": {"tool": "last_deploy", "arguments": {"service": "{{ trigger.data.key }}"}}},
        ]},
        {"id": "report", "depends_on": ["investigate"], "steps": [
            {"id": "publish", "event": {
                "type": "saas.incident.opened", "subject": "{{ steps.ticket.result.ticket }}",
                "data": {"system": "desk", "object": "Incident", "record_id": "{{ steps.ticket.result.ticket }}",
                         "fields": {"service": "{{ trigger.data.key }}",
                                    "last_deploy": "{{ steps.deploy.result.version }}",
                                    "deployed_by": "{{ steps.deploy.result.by }}"}}}},
        ]},
    ],
    "error_handling": [{"type": "system_unavailable", "strategy": "circuit_breaker", "failures": 5,
                        "reset_after": "30s"}],
    "monitoring": {"sla_targets": [{"phase": "investigate", "max_duration": "3s"}]},
}  # fmt: skip


@dataclass
class Desk:
    """The ticket desk: ``POST /incidents`` opens one (once per Idempotency-Key)."""

    opened: dict[str, str] = field(default_factory=dict)  # idempotency key -> ticket
    url: str = ""

    def serve(self) -> ThreadingHTTPServer:
        desk, numbers = self, itertools.count(1001)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                key = self.headers.get("Idempotency-Key", "")
                ticket = desk.opened.setdefault(key, f"INC-{next(numbers)}")
                body = json.dumps({"ticket": ticket}).encode()
                self.send_response(201)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True, name="demo-desk").start()
        return server


@contextlib.contextmanager
def ops_server() -> Iterator[str]:
    """The ops MCP server (official SDK, streamable HTTP) with ``last_deploy(service)``."""
    import uvicorn
    from mcp.server import MCPServer

    mcp = MCPServer("ops")

    @mcp.tool()
    def last_deploy(service: str) -> dict[str, Any]:
        """The last deploy of a service: version, when, by whom."""
        return {"service": service, "version": "v2.4.1", "by": "ci@orders", "at": time.strftime("%H:%M:%S")}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(mcp.streamable_http_app(), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True, name="demo-ops-mcp")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(5)


@contextlib.asynccontextmanager
async def reactions(settings: Settings, tenant: str) -> Any:
    """Start the desk and the ops server, register them and the workflow for ``tenant``."""
    compile_workflow(WORKFLOW_SPEC)  # checked before anything is published
    desk = Desk()
    server = desk.serve()
    try:
        with ops_server() as ops_url:
            systems = {
                "desk": {"id": "desk", "kind": "http", "endpoint": desk.url, "security_level": "internal"},
                "ops": {"id": "ops", "kind": "mcp", "endpoint": ops_url, "security_level": "internal"},
            }
            items: list[tuple[bytes, bytes | None]] = [
                (f"{SYSTEM}{tenant}/{sid}".encode(), orjson.dumps({"system": spec})) for sid, spec in systems.items()
            ]
            items.append((f"{WORKFLOW}{tenant}/{WORKFLOW_SPEC['name']}".encode(), orjson.dumps(WORKFLOW_SPEC)))
            await publish(settings, settings.topic("registry"), items)
            yield desk
    finally:
        server.shutdown()
        server.server_close()

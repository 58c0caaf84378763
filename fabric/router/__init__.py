"""The serving process (``fabric serve``): HTTP pulls and ingest, WebSocket push, context
assembly, MCP, the registry API, all behind the security gate. ``app.create_app`` builds it."""

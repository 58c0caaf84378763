"""The ClickHouse sink (composites and the raw trail) and the queries over it."""

"""The worker's pipeline: the route stage (decode, validate, enrich, processors) and the
materialize stage (Redis hot cache and change feed), with the door for users' own
processing (``Processor``, see docs/extending.md) and the two built in (redaction, quality)."""

from fabric.pipeline.processors import Event, Processor

__all__ = ["Event", "Processor"]

"""The event model: the envelope (a CloudEvent with tenant, sensitivity and sequence), the
catalogue of context types and event-type routing, the schemas derived from Avro, and the
codecs of the three wire forms (structured JSON, binary headers, Confluent-framed Avro)."""

from fabric.events.catalogue import Catalogue, ContextType
from fabric.events.envelope import LEVELS, Envelope, make_event, to_json

__all__ = ["LEVELS", "Catalogue", "ContextType", "Envelope", "make_event", "to_json"]

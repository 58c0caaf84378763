"""Complex-event processing: patterns (YAML) compiled and run in event time over keyed
streams, emitting composite events; the stages that key and match run in the worker."""

from fabric.cep.matcher import Composite, Late, Matcher
from fabric.cep.patterns import Pattern, PatternError, compile_pattern, load_patterns

__all__ = ["Composite", "Late", "Matcher", "Pattern", "PatternError", "compile_pattern", "load_patterns"]

"""Context assembly: injection policies and where they are stored."""

from fabric.assembly.policy import InjectionPolicy, Section, parse_policies
from fabric.assembly.store import PolicyStore

__all__ = ["InjectionPolicy", "PolicyStore", "Section", "parse_policies"]

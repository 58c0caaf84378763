"""Where injection policies live: the bundled file, and the registry topic ``ctx.registry``.

Each published version is its own record (key ``policy:name@version`` for the
platform's, ``policy:<tenant>/name@version`` for a tenant's), so every version stays readable; removing a policy writes tombstones for all its versions. A router
reads the topic at start and follows it, so a policy published by one process
(``fabric policies apply``, ``PUT /v1/policies/{name}``) is served by all.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from fabric.assembly.policy import InjectionPolicy, parse_policies, policy_from
from fabric.errors import ConfigError
from fabric.kafka import compacted
from fabric.kafka.compacted import Follower
from fabric.registry.store import POLICY, split_owner
from fabric.settings import Settings

log = logging.getLogger(__name__)


class PolicyStore:
    """owner -> name -> version -> policy; the highest version is the current one.

    The owner is a tenant, or None for the platform's policies (bundled, or published by
    the operator). A tenant sees its own policies, and the platform's where it has none
    of that name: its version shadows the default for it alone."""

    def __init__(self, bundled: list[InjectionPolicy] | None = None) -> None:
        self.owners: dict[str | None, dict[str, dict[int, InjectionPolicy]]] = {}
        for p in bundled or []:
            self.put(p)

    @classmethod
    def bundled(cls, path: Path | None) -> PolicyStore:
        return cls(parse_policies(path.read_text(), str(path)) if path else [])

    def put(self, policy: InjectionPolicy, tenant: str | None = None) -> None:
        self.owners.setdefault(tenant, {}).setdefault(policy.name, {})[policy.version] = policy

    def apply_record(self, key: str, value: bytes | None) -> None:
        """``[tenant/]name@version`` -> the policy, or None (removed)."""
        full, _, version = key.rpartition("@")
        tenant, name = split_owner(full)
        if not name or not version.isdigit():
            return
        if value is None:
            names = self.owners.get(tenant, {})
            vs = names.get(name, {})
            vs.pop(int(version), None)
            if not vs:
                names.pop(name, None)
            return
        try:
            self.put(policy_from(orjson.loads(value), f"topic record {key}"), tenant)
        except (ConfigError, orjson.JSONDecodeError) as e:
            log.warning("policies: ignoring %s: %s", key, e)

    def versions(self, tenant: str | None) -> dict[str, dict[int, InjectionPolicy]]:
        """name -> versions as ``tenant`` sees them (its own shadow the platform's)."""
        return {**self.owners.get(None, {}), **(self.owners.get(tenant, {}) if tenant else {})}

    def get(self, name: str, version: int | None = None, tenant: str | None = None) -> InjectionPolicy | None:
        vs = self.versions(tenant).get(name)
        if not vs:
            return None
        return vs.get(version) if version is not None else vs[max(vs)]

    def owner(self, name: str, tenant: str | None) -> str | None:
        """Whose policy ``name`` is for ``tenant``: the tenant's, or the platform's (None)."""
        return tenant if tenant and name in self.owners.get(tenant, {}) else None

    def latest(self, tenant: str | None = None) -> list[InjectionPolicy]:
        return [vs[max(vs)] for _, vs in sorted(self.versions(tenant).items()) if vs]

    def next_version(self, name: str, tenant: str | None = None) -> int:
        return max(self.owners.get(tenant, {}).get(name, {}), default=0) + 1


def follower(settings: Settings, store: PolicyStore) -> Follower:
    """Keeps ``store`` current with the published policies: ``start()`` reads them all,
    ``run()`` applies new ones as they are published."""
    return Follower(settings, settings.topic("registry"), store.apply_record, prefix=POLICY)


async def load_published(settings: Settings, store: PolicyStore) -> None:
    """Read the published policies into ``store`` once (for commands)."""
    f = follower(settings, store)
    try:
        await f.start()
    finally:
        await f.stop()


async def publish(settings: Settings, items: list[tuple[str, bytes | None]]) -> None:
    """Write policy records (``name@version`` -> JSON, or None to remove)."""
    await compacted.publish(settings, settings.topic("registry"),
                            [(f"{POLICY}{key}".encode(), value) for key, value in items])  # fmt: skip

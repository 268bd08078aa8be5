"""The clusterrole-aggregation controller, as kube-controller-manager's: every ClusterRole with
an aggregationRule gets the rules of the ClusterRoles its selectors pick (apiserver/
aggregation.py), written back whenever a ClusterRole changes. Chains (view into edit, edit into
admin) settle as each write is seen again."""
import asyncio
import logging

from ..apiserver import aggregation, objects
from .informer import Informer

log = logging.getLogger(__name__)


class ClusterRoleAggregationController:
    def __init__(self, client):
        self.client = client
        self._wake = asyncio.Event()
        self.roles = Informer(client, "clusterroles", on_change=lambda *_: self._wake.set())

    async def run(self) -> None:
        await self.roles.start()
        try:
            await self.roles.synced.wait()
            while True:
                self._wake.clear()
                await self.sync()
                await self._wake.wait()
        finally:
            await self.roles.stop()

    async def sync(self) -> None:
        roles = list(self.roles.cache.values())
        for role in roles:
            rules = aggregation.aggregated_rules(role, roles)
            if rules is None or rules == (role.get("rules") or []):
                continue
            name = role["metadata"]["name"]
            update = dict(role, rules=rules)
            try:
                await self.client.update("clusterroles", "", update)   # CAS on its version
                log.info("clusterrole %s: %d rules aggregated", name, len(rules))
            except objects.Conflict:
                self._wake.set()       # changed meanwhile: its new version comes by the watch
            except objects.ApiError as e:
                log.warning("clusterrole %s: aggregation not written: %s", name, e.message)


__all__ = ["ClusterRoleAggregationController"]

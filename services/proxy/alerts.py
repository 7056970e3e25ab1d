"""The proxy's webhook events (shared/webhooks.py): an upstream down and back, a key reaching a
limit or its budget. `attach` hooks them onto the catalog, the limiter and the budgets, one call
per event; with no WEBHOOK_URLS it hooks nothing, so requests pay nothing for them.

Marks (one delivery each, across every worker): an upstream's `down` and `up`; a key's limit
once an hour; a key's budget once per period. Events name keys by id, username and name, and
upstreams by their label (as answers to clients do): never a secret or a prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.proxy.budgets import Budgets
from services.proxy.catalog import Catalog, UpstreamState
from services.proxy.limits import Limiter
from shared.apikeys import ApiKey
from shared.settings import Settings
from shared.webhooks import Event, Webhooks, webhooks_for


def _key(key: ApiKey) -> dict[str, str | None]:
    return {"keyId": key.id, "username": key.username, "name": key.name}


def upstream_event(state: UpstreamState, error: str | None) -> Event:
    label = state.upstream.label
    if error is None:
        return Event("upstream.up", f"upstream:{label}", "up", {"upstream": label}, after="down")
    return Event("upstream.down", f"upstream:{label}", "down", {"upstream": label, "error": error})


def limit_event(key: ApiKey, limit: str, now: float) -> Event:
    data = {**_key(key), "limit": limit}
    return Event("key.limit_reached", f"limit:{key.id}:{limit}", str(int(now // 3600)), data)


def budget_event(key: ApiKey, unit: str, period: int) -> Event:
    assert key.budget is not None
    data = {**_key(key), "unit": unit, "budget": key.budget.to_json()}
    return Event("key.budget_reached", f"budget:{key.id}:{unit}", str(period), data)


def attach(
    settings: Settings,
    catalog: Catalog,
    limiter: Limiter,
    budgets: Budgets,
    clock: Callable[[], float] = time.time,
) -> Webhooks:
    """The worker's webhooks, told of the events of `catalog`, `limiter` and `budgets`."""
    webhooks = webhooks_for(settings)
    if not webhooks.urls:
        return webhooks
    emit = webhooks.emit
    catalog.on_health = lambda state, error: emit(upstream_event(state, error))
    limiter.on_refused = lambda key, limit: emit(limit_event(key, limit, clock()))
    budgets.on_spent = lambda key, unit, period: emit(budget_event(key, unit, period))
    return webhooks

"""Load balancing across the credentials (keys, deployments, regions) of one provider.

The order in which a request tries a provider's credentials, by the strategy that
`[routing] balancing` names for the model (else `default_balancing`):
- `weighted`: drawn at random in proportion to each credential's weight (`weighted_order`);
- `least_outstanding`: fewest calls in flight through this replica first (ties at random);
- `latency`: power of two choices: two drawn at random, the one with the lower
  exponentially weighted time to first byte (times its calls in flight + 1, as Finagle's
  peak-EWMA does) first; the rest by that same cost. Unmeasured targets cost 0, so each one
  is tried soon.
Weights other than 0 matter to `weighted` only; a weight of 0 keeps a credential for when the
others failed, whatever the strategy.

Every target also has its own circuit breaker (the provider's thresholds): one whose breaker
is open is left out until it closes (half-open: it may take the probe), unless every target
is open, when the provider's own breaker decides.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway.providers.base import Credential
from gateway.providers.resilience import OPEN, CircuitBreaker, weighted_order
from gateway.settings import ProviderSettings, RoutingSettings


@dataclass(slots=True)
class TargetState:
    breaker: CircuitBreaker
    outstanding: int = 0
    ewma_ms: float | None = None
    updated: float = 0.0


class Balancer:
    def __init__(self, settings: RoutingSettings, providers: Mapping[str, ProviderSettings],
                 *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._default = settings.default_balancing
        self._by_model = dict(settings.balancing)
        self._decay_s = settings.latency_decay_s
        self._providers = providers
        self._rng = rng or random.Random()
        self._clock = clock
        self._targets: dict[tuple[str, str], TargetState] = {}

    def strategy(self, model: str) -> str:
        return self._by_model.get(model, self._default)

    def target(self, provider: str, credential: str) -> TargetState:
        key = (provider, credential)
        state = self._targets.get(key)
        if state is None:
            settings = self._providers.get(provider) or ProviderSettings()
            state = self._targets[key] = TargetState(
                CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s,
                               self._clock))
        return state

    def order(self, provider: str, model: str,
              credentials: Sequence[Credential]) -> list[Credential]:
        """The credentials to try, in order, healthy ones only (see the module docstring)."""
        if len(credentials) < 2:
            return list(credentials)
        healthy = [c for c in credentials
                   if self.target(provider, c.name).breaker.state != OPEN]
        if not healthy:
            healthy = list(credentials)
        strategy = self.strategy(model)
        if strategy == "weighted":
            return weighted_order(healthy, lambda c: c.weight, self._rng)
        active = [c for c in healthy if c.weight > 0]
        backups = [c for c in healthy if c.weight <= 0]  # weight 0: only after the others
        if strategy == "least_outstanding":
            shuffled = self._rng.sample(active, len(active))
            ordered = sorted(shuffled, key=lambda c: self.target(provider, c.name).outstanding)
        else:
            ordered = self._two_choices(provider, active) if len(active) > 1 else active
        return [*ordered, *backups]

    def _two_choices(self, provider: str, healthy: list[Credential]) -> list[Credential]:
        def cost(c: Credential) -> float:
            state = self.target(provider, c.name)
            return (state.ewma_ms or 0.0) * (state.outstanding + 1)

        first, second = self._rng.sample(healthy, 2)
        pick = first if cost(first) <= cost(second) else second
        rest = sorted((c for c in healthy if c is not pick), key=cost)
        return [pick, *rest]

    def started(self, provider: str, credential: str) -> None:
        self.target(provider, credential).outstanding += 1

    def answered(self, provider: str, credential: str, first_byte_ms: float) -> None:
        """The target answered (its headers came after `first_byte_ms`); still in flight."""
        state = self.target(provider, credential)
        state.breaker.success()
        now = self._clock()
        if state.ewma_ms is None:
            state.ewma_ms = first_byte_ms
        else:  # decay by the time since the last sample, so old figures fade on their own
            keep = math.exp(-(now - state.updated) / self._decay_s)
            state.ewma_ms = keep * state.ewma_ms + (1 - keep) * first_byte_ms
        state.updated = now

    def ended(self, provider: str, credential: str, *, failed: bool = False) -> None:
        """The call through the target is over; `failed`: it was the provider's failure."""
        state = self.target(provider, credential)
        state.outstanding = max(state.outstanding - 1, 0)
        if failed:
            state.breaker.failure()

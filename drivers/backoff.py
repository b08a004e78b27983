"""One capped exponential backoff with jitter, shared by Modbus pollers, MQTT, InfluxDB and supervision.

Jitter (a random fraction of the delay) keeps fifty gateways from reconnecting to a central broker in
lock-step after it restarts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float = 1.0
    max_s: float = 60.0
    factor: float = 2.0
    jitter: float = 0.2
    _attempt: int = field(default=0, init=False)
    _rng: random.Random = field(default_factory=random.Random, init=False, repr=False)

    def next_delay(self) -> float:
        """The delay before the next attempt; grows until `max_s`."""
        base = min(self.max_s, self.initial_s * self.factor**self._attempt)
        self._attempt += 1
        return base * (1 - self.jitter + 2 * self.jitter * self._rng.random())

    def reset(self) -> None:
        self._attempt = 0

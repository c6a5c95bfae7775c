"""What the smart router's bookkeeping adds to a request that names its model: the balancer's
in-flight count and latency EWMA (started, answered, ended) and one observation of its
attempt, timed over many calls.

    .venv/bin/python bench/router_bookkeeping.py [--calls 200000]
"""

from __future__ import annotations

import argparse
import random
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.observed import Observations
from gateway.providers.balancer import Balancer
from gateway.settings import ProviderSettings, RoutingSettings

ATTEMPTS = [{"provider": "openai", "model": "gpt-4o-mini", "credential": "default",
             "status": 200, "error_code": None, "ms": 123.456}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    calls = parser.parse_args().calls
    observed = Observations(300)
    balancer = Balancer(RoutingSettings(), {"openai": ProviderSettings()},
                        rng=random.Random(1))

    def one_request() -> None:  # what ProxyPipeline._open and finish add per request
        balancer.started("openai", "default")
        balancer.answered("openai", "default", 123.4)
        balancer.ended("openai", "default")
        observed.record_attempts(ATTEMPTS, 150.0)

    best = min(timeit.repeat(one_request, number=calls, repeat=5))
    print(f"{best / calls * 1e6:.2f} us per request (best of 5 x {calls:,} calls)")


if __name__ == "__main__":
    main()

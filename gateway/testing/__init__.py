"""Test helpers shipped with the gateway (fake upstreams for tests, bench and demo)."""

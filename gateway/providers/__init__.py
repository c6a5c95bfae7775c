"""Provider adapters: one file per provider behind the `ProviderAdapter` protocol."""

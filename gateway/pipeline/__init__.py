"""The request pipeline: one module per stage, run in order by `ProxyPipeline`."""

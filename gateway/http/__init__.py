"""Thin HTTP handlers: parse the route, call the domain, render the result."""

"""Thin HTTP routers: they parse, call a use case, and answer."""

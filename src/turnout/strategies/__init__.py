"""Routing strategies. Each decides or abstains (returns None); the router applies policy."""

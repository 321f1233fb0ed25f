"""Chaos tooling: provider simulators with fault injection, and (later) experiments."""

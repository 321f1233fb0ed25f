"""Metrics, traces and logs: how SREs see Lunas."""

"""Local simulators of the payment providers Lunas talks to (RAILS.md), with fault injection.

Each simulator serves the provider's API shape on a data port and a control API on a separate
port, so "provider down" (connection refused) can be injected without losing the control plane.
"""

"""Lunas: a resilient payment orchestrator for Indonesian merchants (queue now, settle later)."""

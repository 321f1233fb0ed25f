"""Lunas: a resilient payment orchestrator for Indonesian online merchants (queue now, settle later)."""

"""Persistence adapters: tables, engine, repositories and the unit of work."""

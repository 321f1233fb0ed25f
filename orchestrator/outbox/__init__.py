"""Transactional outbox: events written with the state change, relayed by workers with leases."""

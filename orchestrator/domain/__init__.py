"""Pure payment domain: state machines, money, events and domain errors. Standard library only."""

"""Game day: Chaos Toolkit experiments (chaos/experiments/) against a private Lunas stack.

``stack`` starts what Lunas runs on, ``load`` is the traffic of a shop's day, ``activities`` the
actions and probes experiments call, ``prometheus`` the alerting an SRE would see, ``runner`` is
``lunas chaos run``.
"""

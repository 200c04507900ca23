"""Deterministic simulation of the sync core: virtual clock, in-memory models, seeded faults.

See tests/sim/README.md for how the pieces fit and how to replay a failing seed.
"""

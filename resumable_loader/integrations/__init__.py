"""Adapters that keep the resumable loader, and its cursor, inside training frameworks.

Each module imports its framework lazily, at use: ``lightning`` needs nothing for the data (the
loader recognises Lightning's injected sampler itself) and holds ``RNGStateCallback`` for the
training loop's randomness (dropout), ``accelerate``, ``transformers`` and ``torchtitan`` hold
small helpers (a loader a framework rebuilds from ours is noticed by the
loader layer itself, :mod:`resumable_loader.loader.visible_sampler`); docs/integrations.md
says what each framework does with the loader and what stays exact.
"""

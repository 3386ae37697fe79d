"""Proof tools: run a pipeline continuously and interrupted, resumed elsewhere, and compare.

``report`` (what was found), ``pipeline`` (the user's factory and the loaders built from it),
``run`` (the driver, :func:`verify_pipeline`), ``split`` (batches back into samples) and
``lockstep`` (simulated ranks and chains of resumed segments).
"""

from resumable_loader.verify.report import VerifyReport
from resumable_loader.verify.run import verify_pipeline

__all__ = ["VerifyReport", "verify_pipeline"]

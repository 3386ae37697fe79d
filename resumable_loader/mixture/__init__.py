"""Weighted mixtures of sources with data phases, exact and resumable at any position."""

from resumable_loader.mixture.mixture import ENDLESS, Mixture
from resumable_loader.mixture.order import MixtureOrder
from resumable_loader.mixture.streams import EpochKeyedDataset, MixtureSource

__all__ = ["ENDLESS", "EpochKeyedDataset", "Mixture", "MixtureOrder", "MixtureSource"]

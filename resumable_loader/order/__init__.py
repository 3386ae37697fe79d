"""The order layer: Philox streams, the keyed permutation, shard-local order and the rank split.

Everything here is a pure function of (seed, epoch, position): no iteration state, nothing that
depends on workers, ranks or batch size.
"""

from resumable_loader.order.partition import Partition
from resumable_loader.order.permutation import Order, Permutation, SequentialOrder, ShuffledOrder
from resumable_loader.order.philox import Purpose, derive_words
from resumable_loader.order.shard_local import ShardLocalOrder, ShardShuffle

__all__ = [
    "Order",
    "Partition",
    "Permutation",
    "Purpose",
    "SequentialOrder",
    "ShardLocalOrder",
    "ShardShuffle",
    "ShuffledOrder",
    "derive_words",
]

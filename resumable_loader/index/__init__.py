"""The sample index: which samples exist, where their bytes are, and its file on disk.

Shard paths and URLs (``paths``), the per-format scanners (``tar``, ``tar_headers``,
``parquet``), the parallel build (``build``), the memory-mapped file (``file``, ``atomic``) and
the :class:`~resumable_loader.index.sharded.ShardedIndex` that ties them together.
"""

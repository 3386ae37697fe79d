"""The loader layer: the drop-in DataLoader and what it is made of.

``dataloader`` (the public :class:`ResumableDataLoader`), ``build_refs`` (which order and refs
the loader's arguments call for), ``refs`` and ``sampler_state`` (what torch's machinery
iterates), ``iteration`` (the iterator), ``progress`` (the cursor's place), ``keyed_fetch``
(loading under each sample's key), ``bad_samples`` (substitutes for samples that fail to load,
in lock-step), ``lookahead`` (the node's next batches, told to a prefetching dataset),
``watch`` (timeouts, stall warnings), ``cursor``, ``identity``, ``topology`` (ranks and
data-parallel groups), ``visible_sampler`` and ``keyed_batches`` (the sampler torch shows,
kept on our order and keyed per sample when a framework iterates it) and ``keyed_dataset`` (a
view keyed per sample for loaders that are not ours). Users import from
:mod:`resumable_loader`; these modules are the layer's own.
"""

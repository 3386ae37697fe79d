"""The loader layer: the drop-in DataLoader and what it is made of.

``dataloader`` (the public :class:`ResumableDataLoader`), ``build_refs`` (which order and refs
the loader's arguments call for), ``refs`` and ``sampler_state`` (what torch's machinery
iterates), ``iteration`` (the iterator), ``progress`` (the cursor's place), ``keyed_fetch``
(loading under each sample's key), ``watch`` (timeouts, stall warnings), ``cursor``,
``identity``, ``topology`` (ranks and data-parallel groups) and ``visible_sampler`` (the
sampler torch shows, kept on our order when a framework iterates it). Users import from
:mod:`resumable_loader`; these modules are the layer's own.
"""

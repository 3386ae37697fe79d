"""The user's pipeline: its factory, found by name, and the loaders built from it."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    default_collate,
)

from resumable_loader.errors import ConfigError, PipelineError, ResumableLoaderError
from resumable_loader.loader.dataloader import ResumableDataLoader
from resumable_loader.verify.lockstep import Config, own_order
from resumable_loader.verify.split import Layout, learn_layout

DEFAULT_WORKERS = 2  # compared against num_workers=0 when the factory's loader has none


# Loader options torch rejects with num_workers=0; dropped for the in-process configurations.
_WORKER_ONLY = ("prefetch_factor", "persistent_workers", "multiprocessing_context")


@contextlib.contextmanager
def users_code(what: str) -> Iterator[None]:
    """Turn an exception raised inside ``what`` into a PipelineError naming it in one line;
    the package's own errors and a StreamError (a verdict) pass unchanged.
    """
    try:
        yield
    except ResumableLoaderError:  # the package's own errors, a StreamError (a verdict) among them
        raise
    except Exception as error:
        # torch re-raises a worker's error with the worker's traceback in the message
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = " ... ".join(dict.fromkeys(lines[:1] + lines[-1:]))
        raise PipelineError(f"{what} raised {type(error).__name__}: {message}") from error


def load_factory(spec: str) -> Callable[[], Any]:
    """Import ``module:function`` (the module from the current directory or sys.path) or
    ``path/to/file.py:function``.

    Raises:
        ConfigError: the spec is malformed, the module does not import, or the name is not a
            callable in it.
    """
    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name:
        raise ConfigError(
            f"FACTORY must be module:function or path/to/file.py:function (e.g. "
            f"mypackage.data:make_loader), got {spec!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = _import(module_name)
    except Exception as error:
        raise ConfigError(
            f"cannot import module {module_name!r}: {type(error).__name__}: {error}"
        ) from error
    function = getattr(module, function_name, None)
    if function is None:
        raise ConfigError(f"function {function_name!r} not found in module {module_name!r}")
    if not callable(function):
        raise ConfigError(f"{spec} is a {type(function).__name__}, not a function")
    return function


def _import(name: str) -> ModuleType:
    """The module ``name``: a dotted name, or a .py file's path (imported under its stem)."""
    if not name.endswith(".py"):
        return importlib.import_module(name)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"no file {name}")
    spec = importlib.util.spec_from_file_location(Path(name).stem, name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: pickling by reference finds it
    spec.loader.exec_module(module)
    return module


class Pipeline:
    """Builds the loaders of any configuration from the user's factory, each over a fresh
    dataset (as a resumed job would), all with the same explicit seed.
    """

    def __init__(self, factory: Callable[[], Any], name: str, seed: int) -> None:
        self.factory, self.name = factory, name
        dataset, kwargs, self.conversion = self._call()
        self.length = _length(dataset)
        self.batch_size: int | None = kwargs.get("batch_size", 1)
        self.num_workers: int = kwargs.get("num_workers", 0)
        self.seed: int = seed if kwargs.get("seed") is None else kwargs["seed"]
        self._quarantine: str | None = None  # the folder of the run in progress (run_quarantine)

    @contextlib.contextmanager
    def run_quarantine(self) -> Iterator[None]:
        """A fresh quarantine folder for the loaders of one run (a chain of configurations,
        which share one as a job and its resumes do), removed after it: verify never writes
        the pipeline's own ``quarantine_dir``, and no run counts another's failures."""
        with tempfile.TemporaryDirectory(prefix="resumable-verify-quarantine-") as folder:
            self._quarantine = folder
            try:
                yield
            finally:
                self._quarantine = None

    def _call(self) -> tuple[Dataset, dict[str, Any], str | None]:
        """The factory's dataset and loader arguments, and, when it returned a torch
        DataLoader, a note of what it was converted to.
        """
        with users_code(f"{self.name}()"):
            result = self.factory()
        if isinstance(result, ResumableDataLoader):
            own_order(result)
            return result.dataset, _loader_kwargs(result), None
        if isinstance(result, DataLoader):
            kwargs = _torch_loader_kwargs(result, self.name)
            shown = ", ".join(f"{key}={kwargs[key]!r}" for key in _SHOWN if key in kwargs)
            return (
                result.dataset,
                kwargs,
                (
                    f"{self.name}() returned a torch DataLoader: converted to the equivalent "
                    f"ResumableDataLoader({shown}, ...), whose order comes from its seed, not "
                    "from the DataLoader's sampler or generator"
                ),
            )
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
            return result[0], dict(result[1]), None
        raise ConfigError(
            f"{self.name}() returned a {type(result).__name__}, not a ResumableDataLoader, a "
            "torch DataLoader or a (dataset, loader_kwargs dict) pair"
        )

    @functools.cached_property
    def layout(self) -> Layout:
        """How the collate_fn lays out a batch: learnt from its outputs for the batch size and
        one more copies of the first sample, collated as the loader would, in its batch key.
        """
        if self.batch_size is None:
            return {}
        dataset, kwargs, _ = self._call()
        collate = kwargs.get("collate_fn") or default_collate
        sizes = (self.batch_size, self.batch_size + 1)
        with users_code(f"collating copies of {self.name}()'s first sample"):
            probe = ResumableDataLoader(
                dataset,
                collate_fn=lambda one: [collate(one * size) for size in sizes],
                seed=self.seed,
                reseed_globals=kwargs.get("reseed_globals", True),
                # a first sample that fails is substituted, as the pipeline does (nothing kept)
                on_sample_error=kwargs.get("on_sample_error", "raise"),
                max_bad_fraction=kwargs.get("max_bad_fraction", 1.0),
            )
            small, large = next(iter(probe))
        return learn_layout(small, large, self.batch_size)

    def loaders(self, config: Config) -> list[ResumableDataLoader]:
        """One loader per rank of ``config``."""
        return [self._loader(config, rank) for rank in range(config.world_size)]

    def _loader(self, config: Config, rank: int) -> ResumableDataLoader:
        dataset, kwargs, _ = self._call()
        if _length(dataset) != self.length:
            raise PipelineError(
                f"{self.name}() built datasets of {self.length} and then {_length(dataset)} "
                "samples: a resumed job rebuilds the dataset, and its cursor's positions hold "
                "only for the same samples; make the factory build the same dataset each time "
                "(a fixed, sorted file list), and change the data only between runs"
            )
        kwargs.update(
            num_workers=config.num_workers,
            batch_size=config.batch_size,
            seed=self.seed,
            rank=rank,
            world_size=config.world_size,
        )
        if config.num_workers == 0:
            for name in _WORKER_ONLY:
                kwargs.pop(name, None)
        if kwargs.get("quarantine_dir") is not None:
            kwargs["quarantine_dir"] = self._quarantine
        with users_code(f"building {self.name}()'s loader"):
            try:
                loader = ResumableDataLoader(dataset, **kwargs)
            except TypeError as error:
                raise ConfigError(
                    f"{self.name}() gave loader arguments ResumableDataLoader does not take: "
                    f"{error}"
                ) from error
        own_order(loader)
        return loader


def _length(dataset: Any) -> int | None:
    """``len(dataset)``, None for a dataset without one (an IterableDataset)."""
    return len(dataset) if callable(getattr(dataset, "__len__", None)) else None


def _torch_arguments(loader: DataLoader) -> dict[str, Any]:
    """The torch DataLoader arguments of ``loader`` that carry over as they are."""
    return dict(
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
        in_order=loader.in_order,
    )


def _loader_kwargs(loader: ResumableDataLoader) -> dict[str, Any]:
    """The arguments that rebuild ``loader`` (its seed only if it was chosen explicitly)."""
    return dict(_torch_arguments(loader), **loader.loader_arguments())


_SHOWN = ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last", "num_workers")


def _torch_loader_kwargs(loader: DataLoader, name: str) -> dict[str, Any]:
    """The ResumableDataLoader arguments equivalent to a torch DataLoader's: shuffle for its
    RandomSampler (without replacement, over the whole dataset) or SequentialSampler; any
    other sampler or batch_sampler is passed on (which verify refuses: it cannot place the
    samples of an order it does not make).

    Raises:
        ConfigError: the DataLoader's dataset is an IterableDataset, which has no order to
            convert.
    """
    if isinstance(loader.dataset, IterableDataset):
        raise ConfigError(
            f"{name}() returned a DataLoader of {type(loader.dataset).__name__}, which cannot be "
            f"converted: {type(loader.dataset).__name__} is an IterableDataset, whose order lives "
            "in its own __iter__; verify needs a map-style Dataset"
        )
    kwargs = _torch_arguments(loader)
    if loader.batch_size is None and loader.batch_sampler is not None:  # the user's own
        kwargs.update(batch_size=1, batch_sampler=loader.batch_sampler)
        return kwargs
    sampler, length = loader.sampler, len(loader.dataset)
    if type(sampler) is SequentialSampler and len(sampler) == length:
        kwargs["shuffle"] = False
    elif (
        type(sampler) is RandomSampler
        and not sampler.replacement
        and sampler.num_samples == len(sampler.data_source) == length
    ):
        kwargs["shuffle"] = True
    else:
        kwargs["sampler"] = sampler
    return kwargs

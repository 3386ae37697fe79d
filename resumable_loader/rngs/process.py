"""Reseeds the process-global generators augmentations draw from, in place, from a sample's key.

Python's ``random``, numpy's legacy global RNG and torch's CPU default generator are all
MT19937. Their own seeding functions cost ~10 us together, too much once per sample, and seed
Python's and numpy's the same way (equal words give equal streams) while torch keeps only 32
bits of a seed. Here each generator gets a full state of its own from the key
(csrc/global_rngs.h), written by one C++ call into memory whose layout is checked against the
library's public get/set-state API the first time a process reseeds; any generator whose check
fails is reseeded through that API instead, with the same resulting stream. Per sample, one C++
call (:func:`reseed_sample`) derives the key and installs all three states. (torch's API takes
a state only in its own format: if the check of that format fails, as it would on a torch that
changed it, torch is seeded with ``manual_seed`` of its 64-bit seed, another stream.) On Linux,
torch's state is written straight into its generator under the generator's own mutex, as its
``set_state`` would leave it (checked likewise), which halves the call; else through
``set_state``.
"""

from __future__ import annotations

import ctypes
import random
import struct
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from resumable_loader import _core
from resumable_loader.errors import ConfigError
from resumable_loader.order.philox import Purpose, derive_words

PYTHON, NUMPY, TORCH = 0, 1, 2  # generator numbers, as csrc/global_rngs.h names them
ALL = _core.ALL_GLOBAL_RNGS  # a set of generators is a mask, bit g for generator g
_MT_N = 624
_PROBE_KEY = (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)
# torch's CPU generator, as csrc/global_rngs.h lays it out: the engine's state words follow its
# seed, left, seeded and next; the cached normals follow the engine; the legacy state's normals
# (normal_x, normal_y, normal_rho, normal_is_valid, then the float sample and its flag) follow
# its 624 64-bit words. The engine is looked for 8-byte aligned after a GeneratorImpl base of
# up to _TORCH_MAX_BASE bytes (80 in torch 2.13), nearest first, so that no read goes past it.
_MUTEX_SIZE = 40
_MUTEX_AT, _DEVICE_AT = 64, 24  # bytes before the engine: mutex, device, dispatch keys, pointer
_ENGINE_STATE_AT = struct.calcsize("<QiBxxxI")
_ENGINE_BYTES = 8 * -(-(_ENGINE_STATE_AT + 4 * _MT_N) // 8)
_LEGACY_NORMALS_AT = struct.calcsize(f"<QiiQ{_MT_N}Q")
_TORCH_MAX_BASE = 256


class GlobalRngs:
    """This process's three global generators, bound to their state memory once checked."""

    def __init__(self) -> None:
        self._python = random.random.__self__  # the instance the module functions are bound to
        self._numpy_bit_generator = np.random.get_bit_generator()
        self._torch = torch.default_generator
        self._torch_buffer = torch.empty(_core.TORCH_CPU_GENERATOR_STATE_SIZE, dtype=torch.uint8)
        python = _python_layout(self._python)
        numpy = _numpy_layout(np.random.mtrand._rand, self._numpy_bit_generator)
        torch_fast = _torch_layout_ok(self._torch, self._torch_buffer)
        # The in-place write is checked against states set in the format checked above.
        in_place = _torch_fields_layout(self._torch, self._torch_buffer) if torch_fast else None
        self._targets = _core.GlobalRngTargets(
            *(python or (0, 0)),
            *(numpy[:4] if numpy else (0, 0, 0, 0)),
            self._torch_buffer.data_ptr() if torch_fast and in_place is None else 0,
            *(in_place or (0, 0)),
        )
        self._python_by_api, self._numpy_by_api = python is None, numpy is None
        self._torch_by_api = not torch_fast
        self._torch_in_place = in_place is not None  # written by the targets, no set_state
        self._numpy_lock = self._numpy_bit_generator.lock
        # Where every layout checked out (the usual case), one C++ call does a sample's reseed.
        self._reseeder = (
            _core.SampleReseeder(
                self._targets,
                numpy[4],
                self._numpy_lock,
                self._python,
                self._torch,
                self._torch_buffer,
            )
            if python and numpy and torch_fast
            else None
        )

    @property
    def watchable(self) -> Any:
        """The one-call reseeder, where every layout checked out and torch's generator is
        written in place: what reseed_globals="auto" needs to give the generators an entry
        state and see which a batch changed (rngs/idle.py); else None."""
        return self._reseeder if self._torch_in_place else None

    @property
    def current(self) -> bool:
        """False once numpy's global bit generator was replaced (np.random.set_bit_generator)."""
        return np.random.get_bit_generator() is self._numpy_bit_generator

    def reseed(self, key: tuple[int, int, int, int]) -> None:
        """Give every global generator the state of ``key``'s sample."""
        with self._numpy_lock:  # numpy draws large arrays without the GIL, under this lock
            self._targets.reseed(key)
        if self._python_by_api:
            self._python.setstate((3, (*_core.mt19937_state_words(key, PYTHON), 0), None))
        self._python.gauss_next = None
        if self._numpy_by_api:
            words = np.array(_core.mt19937_state_words(key, NUMPY), dtype=np.uint32)
            np.random.set_state(("MT19937", words, 0, 0, 0.0))
        if self._torch_by_api:
            self._torch.manual_seed(_core.global_rng_seed(key, TORCH) & _core.TORCH_SEED_MASK)
        elif not self._torch_in_place:
            self._torch.set_state(self._torch_buffer)

    def save(self) -> tuple[Any, ...]:
        """The three states now (cheap: memory copies where the layouts were checked)."""
        with self._numpy_lock:
            snapshot = self._targets.save()
        return (
            snapshot,
            self._python.getstate() if self._python_by_api else self._python.gauss_next,
            np.random.get_state() if self._numpy_by_api else None,
            None if self._torch_in_place else self._torch.get_state(),
        )

    def restore(self, saved: tuple[Any, ...]) -> None:
        """Put back what :meth:`save` returned."""
        snapshot, python, numpy, torch_state = saved
        with self._numpy_lock:
            self._targets.restore(snapshot)
        if self._python_by_api:
            self._python.setstate(python)
        else:
            self._python.gauss_next = python
        if self._numpy_by_api:
            np.random.set_state(numpy)
        if not self._torch_in_place:
            self._torch.set_state(torch_state)


_bound: GlobalRngs | None = None
# _bound's one-call reseed (SampleReseeder), or None where a generator is reseeded by its API:
# its bound __call__, which Python calls without building an argument tuple (the object itself
# is called through its type's __call__ slot: a tuple a call, ~35 ns, and gen-0 collections).
_reseeder: Callable[[int, int, int, Purpose, int], bool] | None = None


def this_process() -> GlobalRngs:
    """This process's :class:`GlobalRngs` (checked again if numpy's bit generator changed)."""
    global _bound, _reseeder
    if _bound is None or not _bound.current:
        bit_generator = np.random.get_bit_generator()
        if not isinstance(bit_generator, np.random.MT19937):
            raise ConfigError(
                f"numpy's global RNG uses {type(bit_generator).__name__}, but reseed_globals=True "
                "reseeds MT19937 only: restore it with "
                "np.random.set_bit_generator(np.random.MT19937()), or pass reseed_globals=False "
                "and draw from resumable_loader.sample_numpy_generator()"
            )
        _bound = GlobalRngs()
        _reseeder = _bound._reseeder.__call__ if _bound._reseeder is not None else None
    return _bound


def bind_for_workers() -> None:
    """Check this process's layouts now (where numpy's global bit generator is MT19937), before
    it forks workers: each inherits them instead of checking them again (~18 ms of CPU per
    worker, per epoch without persistent workers)."""
    if isinstance(np.random.get_bit_generator(), np.random.MT19937):
        this_process()


def reseed_sample(
    seed: int, epoch: int, position: int, purpose: Purpose, generators: int = ALL
) -> None:
    """Reseed this process's global generators in the set ``generators`` (bit g: generator g)
    for a sample's key (seed, epoch, position, purpose), called once per sample: one C++ call
    derives the key and writes their states.

    The call writes nothing and returns False once numpy's global bit generator was replaced;
    that, a generator reseeded by its API, or coordinates that are not plain ints in range go
    through :func:`this_process`, which rebinds, validates and reseeds (every generator where
    a layout did not check out).
    """
    if _reseeder is not None:
        try:
            if _reseeder(seed, epoch, position, purpose, generators):
                return
        except TypeError:
            pass  # validated below, outside the handler (no chained nanobind TypeError)
    rngs = this_process()
    words = derive_words(seed, epoch, position, purpose)  # validates (ConfigError)
    if _reseeder is None or not _reseeder(
        int(seed), int(epoch), int(position), purpose, generators
    ):
        rngs.reseed(words)


def _read(address: int, size: int) -> bytes:
    return ctypes.string_at(address, size)


def _python_layout(instance: random.Random) -> tuple[int, int] | None:
    """Addresses of CPython's MT state words and index in ``instance``, if they check out."""
    saved = instance.getstate()
    try:
        probe = tuple(_core.mt19937_state_words(_PROBE_KEY, NUMPY))  # any distinctive words
        instance.setstate((3, (*probe, 417), None))
        memory = _read(id(instance), type(instance).__basicsize__)
        offset = memory.find(struct.pack(f"<{_MT_N}I", *probe))
        if offset < 4 or struct.unpack_from("<i", memory, offset - 4)[0] != 417:
            return None
        layout = (id(instance) + offset, id(instance) + offset - 4)
        _core.GlobalRngTargets(*layout, 0, 0, 0, 0, 0).reseed(_PROBE_KEY)
        expected = (3, (*_core.mt19937_state_words(_PROBE_KEY, PYTHON), 0), None)
        return layout if instance.getstate() == expected else None
    finally:
        instance.setstate(saved)


def _numpy_layout(state: Any, bit_generator: Any) -> tuple[int, int, int, int, int] | None:
    """Addresses of numpy's MT key, pos, has_gauss and gauss, and of the RandomState's own copy
    of its bit generator's interface, if they check out.

    The key and pos are the bit generator's public ``ctypes.state_address``; the cached
    Gaussian sits in the RandomState's ``aug_bitgen_t``, found as the word that points back at
    the RandomState's copy of the interface (whose first word is that state address for as
    long as this bit generator is numpy's global one).
    """
    saved = np.random.get_state()
    try:
        key_address = bit_generator.ctypes.state_address
        memory = _read(id(state), type(state).__basicsize__)
        interface = memory.find(struct.pack("<Q", key_address))
        aug = memory.find(struct.pack("<Q", id(state) + interface)) if interface > 0 else -1
        if aug < 0:
            return None
        layout = (key_address, key_address + 4 * _MT_N, id(state) + aug + 8, id(state) + aug + 16)
        words = np.array(_core.mt19937_state_words(_PROBE_KEY, PYTHON), dtype=np.uint32)
        np.random.set_state(("MT19937", words, 5, 1, 0.25))
        state_bytes = _read(key_address, 4 * _MT_N + 4)
        if state_bytes != words.astype("<u4").tobytes() + struct.pack("<i", 5):
            return None  # read every address before anything is written there
        if not _gauss_at(layout, 1, 0.25):
            return None
        _core.GlobalRngTargets(0, 0, *layout, 0).reseed(_PROBE_KEY)
        kind, key, pos, has_gauss, gauss = np.random.get_state()
        expected = _core.mt19937_state_words(_PROBE_KEY, NUMPY)
        ok = (kind, pos, has_gauss, gauss) == ("MT19937", 0, 0, 0.0)
        return (*layout, id(state) + interface) if ok and key.tolist() == expected else None
    finally:
        np.random.set_state(saved)


def _gauss_at(layout: tuple[int, int, int, int], has_gauss: int, gauss: float) -> bool:
    return (
        struct.unpack("<i", _read(layout[2], 4))[0] == has_gauss
        and struct.unpack("<d", _read(layout[3], 8))[0] == gauss
    )


def _torch_fields_layout(
    generator: torch.Generator, buffer: torch.Tensor
) -> tuple[int, int] | None:
    """Addresses of the CPU ``generator``'s fields (``_core``'s TorchCpuGeneratorFields) and of
    its mutex, if they check out (Linux builds, where both sides' std::mutex is glibc's); called
    once ``buffer``'s format checked out (:func:`_torch_layout_ok`).

    The generator object (``generator._cdata``) is searched for a state set through
    ``set_state``; torch's GeneratorImpl ends with the mutex (40 bytes, zero while unlocked),
    the device (CPU: bytes 0, 0xff), the dispatch keys and a pointer, right before the engine.
    A state written there must then read back through ``get_state`` exactly as the same state
    set through ``set_state`` does, cached normals cleared included.
    """
    impl = getattr(generator, "_cdata", None)
    if not sys.platform.startswith("linux") or _core.STD_MUTEX_SIZE != _MUTEX_SIZE or not impl:
        return None
    saved = generator.get_state()
    try:
        _core.GlobalRngTargets(0, 0, 0, 0, 0, 0, buffer.data_ptr()).reseed(_PROBE_KEY)
        probe = bytearray(buffer.numpy().tobytes())
        struct.pack_into("<8xdxxxxxxxxi4xf?", probe, _LEGACY_NORMALS_AT, 2.5, 1, 4.5, True)
        generator.set_state(torch.frombuffer(probe, dtype=torch.uint8))
        words = struct.pack(f"<{_MT_N}I", *_core.mt19937_state_words(_PROBE_KEY, TORCH))
        engine = next(
            (
                at
                for at in range(_MUTEX_AT, _TORCH_MAX_BASE + 1, 8)
                if _read(impl + at + _ENGINE_STATE_AT, len(words)) == words
            ),
            None,
        )
        if engine is None:
            return None
        memory = _read(impl, engine + _core.TORCH_CPU_GENERATOR_FIELDS_SIZE)
        seed = _core.global_rng_seed(_PROBE_KEY, TORCH) & _core.TORCH_SEED_MASK
        normals = engine + _ENGINE_BYTES
        if (
            memory[engine - _MUTEX_AT : engine - _MUTEX_AT + _MUTEX_SIZE] != bytes(_MUTEX_SIZE)
            or memory[engine - _DEVICE_AT : engine - _DEVICE_AT + 2] != b"\x00\xff"
            or struct.unpack_from("<QiBxxxI", memory, engine) != (seed, _MT_N, 1, 0)
            or struct.unpack_from("<f?xxxd?", memory, normals) != (4.5, True, 2.5, True)
        ):
            return None
        layout = (impl + engine, impl + engine - _MUTEX_AT)
        other = tuple(reversed(_PROBE_KEY))
        _core.GlobalRngTargets(0, 0, 0, 0, 0, 0, buffer.data_ptr()).reseed(other)
        generator.set_state(buffer)
        expected = generator.get_state()
        generator.set_state(torch.frombuffer(probe, dtype=torch.uint8))
        _core.GlobalRngTargets(0, 0, 0, 0, 0, 0, 0, *layout).reseed(other)
        return layout if torch.equal(generator.get_state(), expected) else None
    finally:
        generator.set_state(saved)


def _torch_layout_ok(generator: torch.Generator, buffer: torch.Tensor) -> bool:
    """Whether a state written into ``buffer`` is what ``generator`` reads back after set_state."""
    saved = generator.get_state()
    try:
        if saved.numel() != buffer.numel():
            return False
        _core.GlobalRngTargets(0, 0, 0, 0, 0, 0, buffer.data_ptr()).reseed(_PROBE_KEY)
        generator.set_state(buffer)
        state = generator.get_state().numpy()
        seed, left, seeded, following = struct.unpack_from("<QiiQ", state.tobytes())
        words = np.frombuffer(state.tobytes(), dtype="<u8", count=_MT_N, offset=24).tolist()
        return (
            (seed, left, seeded, following)
            == (_core.global_rng_seed(_PROBE_KEY, TORCH) & _core.TORCH_SEED_MASK, _MT_N, 1, 0)
            and words == _core.mt19937_state_words(_PROBE_KEY, TORCH)
            and generator.initial_seed() == seed
        )
    finally:
        generator.set_state(saved)

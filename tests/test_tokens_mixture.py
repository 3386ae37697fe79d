"""Token corpora in a Mixture: exact shares of tokens, exact resume, and a shuffle-mode source
shuffling its documents by its own seed and source epoch (a fresh order each of its epochs)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from resume_harness import digest
from tokens_factory import FIELDS, documents, run_ranks, write_megatron
from torch.utils.data import Dataset

from resumable_loader import DataLoader, sample_key
from resumable_loader.errors import ConfigError, StateDictError
from resumable_loader.mixture import Mixture, MixtureSource
from resumable_loader.mixture.streams import source_seed
from resumable_loader.order.philox import Purpose
from resumable_loader.rngs.sample import clear_key, install_key
from resumable_loader.tokens import TokenDataset
from resumable_loader.verify import verify_pipeline

SEQ_LEN = 8
EPOCH = 80  # the loader's epoch, in windows
ANNEAL = 96  # global position (windows, all ranks) where the weights change, inside epoch 1
WEIGHTS = {"web": 3, "code": 1}
ANNEALED = {"web": 1, "code": 1}
NAMES = ("web", "code")


class Tagged(Dataset):
    """A source whose samples carry their source, window and key (the mixture passes them on).

    It forwards the stream-coordinate protocol (``epoch_keyed``, ``keyed_item``), as any wrapper
    of a shuffle-mode TokenDataset must, so the mixture hands it its own seed and epoch.
    """

    def __init__(self, name: str, inner: TokenDataset) -> None:
        self.name, self.inner = name, inner
        self.fingerprint = inner.fingerprint
        self.epoch_keyed = inner.epoch_keyed

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._tagged(index, self.inner[index])

    def keyed_item(self, index: int, *, seed: int, epoch: int) -> dict[str, Any]:
        return self._tagged(index, self.inner.keyed_item(index, seed=seed, epoch=epoch))

    def _tagged(self, index: int, sample: dict[str, Any]) -> dict[str, Any]:
        key = sample_key()
        window = NAMES.index(self.name) * 10**6 + index  # source and window in one id
        return {"id": window, "epoch": key.epoch, "pos": key.position, **sample}


class Unkeyed(Dataset):
    """A source as the mixture saw a shuffle-mode TokenDataset before it declared the protocol:
    a plain dataset of the same identity, read under the loader's (seed, epoch)."""

    def __init__(self, inner: TokenDataset) -> None:
        self.inner, self.fingerprint = inner, inner.fingerprint

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.inner[index]


@pytest.fixture(scope="module", params=["concat", "shuffle"])
def corpora(request, tmp_path_factory):
    """Both sources cut one way (in shuffle mode each source shuffles its documents by its own
    seed and source epoch), over two loader epochs with an annealing phase."""
    d = tmp_path_factory.mktemp("mixture")
    mode = request.param
    web = TokenDataset(write_megatron(d, "web", documents(2, 60)), SEQ_LEN, documents=mode)
    code = TokenDataset(write_megatron(d, "code", documents(3, 8)), SEQ_LEN, documents=mode)
    assert len(code) < 30 < len(web)  # code (~15 windows) runs out and starts its next epochs
    return web, code


def factory(corpora, batch_size, workers, **mixture):
    """``make(rank, world_size)``: a loader over the web+code mixture (by default the phased
    one of EPOCH positions an epoch; ``mixture`` replaces its weights and settings)."""
    web, code = corpora
    settings = mixture or {
        "weights": WEIGHTS,
        "phases": [(ANNEAL, ANNEALED)],
        "samples_per_epoch": EPOCH,
    }

    def make(rank, world_size):
        sources = {"web": Tagged("web", web), "code": Tagged("code", code)}
        return DataLoader(
            Mixture(sources, **settings),
            batch_size=batch_size,
            num_workers=workers,
            seed=11,
            rank=rank,
            world_size=world_size,
        )

    return make


EPOCHS = 2


@pytest.fixture(scope="module")
def continuous(corpora):
    stream, _ = run_ranks(factory(corpora, 8, 0), 1, EPOCHS)
    return stream


def test_weights_are_exact_shares_of_tokens_in_each_phase(corpora, continuous):
    assert len(continuous) == EPOCHS * EPOCH
    for first, stop, weights in [(0, ANNEAL, WEIGHTS), (ANNEAL, EPOCHS * EPOCH, ANNEALED)]:
        total = sum(weights.values())
        for end in range(first + 1, stop + 1):
            prefix = continuous[first:end]
            for index, name in enumerate(NAMES):
                tokens = SEQ_LEN * sum(1 for e in prefix if e[2] // 10**6 == index)
                share = SEQ_LEN * (end - first) * weights[name] / total
                assert abs(tokens - share) <= SEQ_LEN, (name, first, end)  # within one window


def test_each_source_tiles_its_own_epochs(corpora, continuous):
    web, code = corpora
    for index, dataset in enumerate((web, code)):
        windows = [e[2] % 10**6 for e in continuous if e[2] // 10**6 == index]
        for start in range(0, len(windows), len(dataset)):
            epoch = windows[start : start + len(dataset)]
            assert len(set(epoch)) == len(epoch)  # no window twice before the source's epoch ends
    loader = factory(corpora, 8, 0)(0, 1)
    for epoch, position, window, tokens in continuous:  # the mixture delivers the source's window
        info = loader.sample_at(epoch, position)
        name, dataset = NAMES[window // 10**6], (web, code)[window // 10**6]
        assert (info["source"], info["sample_id"]) == (name, window % 10**6)
        assert info["source_epoch"] == info["draw"] // len(dataset)
        assert info["source_seed"] == source_seed(11, name)
        keyed = {"seed": info["source_seed"], "epoch": info["source_epoch"]}
        sample = dataset.window(window % 10**6, **(keyed if dataset.epoch_keyed else {}))
        assert tokens == digest(b"".join(sample[f].numpy().tobytes() for f in FIELDS))
    code_windows = [e[2] for e in continuous if e[2] // 10**6 == 1]
    assert len(code_windows) > 2 * len(code)  # the small source went through several epochs


@pytest.mark.parametrize(
    "stop, before, after",
    [
        (4, (0, 8, 1), (2, 4, 2)),  # inside the first phase, across the epoch and phase ends
        (12, (2, 4, 2), (0, 5, 1)),  # exactly at the phase boundary: 12 global batches of 8
        (13, (1, 8, 1), (1, 3, 3)),  # inside the annealing phase, in the second epoch
    ],
)
def test_resumed_mixture_streams_equal_the_continuous_one(corpora, continuous, stop, before, after):
    head, state = run_ranks(
        factory(corpora, before[1], before[0]), before[2], EPOCHS, stop_after=stop
    )
    tail, _ = run_ranks(factory(corpora, after[1], after[0]), after[2], EPOCHS, state=state)
    assert head + tail == continuous


# An endless mixture (one loader epoch) in which the small shuffle-mode source wraps several of
# its own epochs: each must be a fresh document shuffle under the source's own seed.
ENDLESS_WEIGHTS = {"web": 1, "code": 1}
ENDLESS_BATCHES = 12  # global batches of 8: 96 positions, ~3 epochs of code


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    d = tmp_path_factory.mktemp("endless")
    web = TokenDataset(write_megatron(d, "web", documents(2, 60)), SEQ_LEN, documents="shuffle")
    code = TokenDataset(write_megatron(d, "code", documents(3, 8)), SEQ_LEN, documents="shuffle")
    return web, code


def endless_factory(shuffled, batch_size, workers):
    return factory(shuffled, batch_size, workers, weights=ENDLESS_WEIGHTS)


def tensors(sample: dict[str, Any]) -> str:
    return digest(b"".join(sample[f].numpy().tobytes() for f in FIELDS))


@pytest.fixture(scope="module")
def endless(shuffled):
    """(provenance, digest of the delivered tensors) of every position of the continuous run."""
    web, code = shuffled
    loader = DataLoader(Mixture({"web": web, "code": code}, ENDLESS_WEIGHTS), batch_size=8, seed=11)
    delivered = []
    for batch, _ in zip(loader, range(ENDLESS_BATCHES), strict=False):
        delivered.extend(tensors({f: batch[f][i] for f in FIELDS}) for i in range(8))
    return [(loader.sample_at(0, p), d) for p, d in enumerate(delivered)]


def test_each_source_epoch_is_a_fresh_document_shuffle_under_the_sources_own_seed(
    shuffled, endless
):
    web, code = shuffled
    datasets = {"web": web, "code": code}
    by_epoch: dict[int, list] = {}
    for info, delivered in endless:
        name, dataset = info["source"], datasets[info["source"]]
        epoch = info["draw"] // len(dataset)  # the source's own epoch, from its draw count
        assert (info["source_seed"], info["source_epoch"]) == (source_seed(11, name), epoch)
        window = dataset.window(info["sample_id"], seed=source_seed(11, name), epoch=epoch)
        assert delivered == tensors(window)
        if name == "code":
            by_epoch.setdefault(epoch, []).append((info["sample_id"], delivered))
    full = [by_epoch[e] for e in sorted(by_epoch) if len(by_epoch[e]) == len(code)]
    assert len(full) >= 3  # the small source wrapped into several of its own epochs
    for windows in full:  # each source epoch cuts every window once
        assert sorted(i for i, _ in windows) == list(range(len(code)))
    for before, after in itertools.pairwise(full):  # a new document order: new windows
        assert sorted(d for _, d in before) != sorted(d for _, d in after)


def test_a_sources_draws_are_its_standalone_loaders_stream(shuffled, endless):
    """By the contract, source i's k-th draw is position k mod n of its epoch k // n of its own
    order under its own seed: a standalone loader with that seed and shuffle=True."""
    for name, dataset in zip(("web", "code"), shuffled, strict=True):
        drawn = [d for info, d in endless if info["source"] == name]
        alone = DataLoader(dataset, batch_size=5, shuffle=True, seed=source_seed(11, name))
        stream = []
        while len(stream) < len(drawn):
            for batch in alone:
                stream.extend(
                    tensors({f: batch[f][i] for f in FIELDS}) for i in range(len(batch[FIELDS[0]]))
                )
        assert drawn == stream[: len(drawn)]


def endless_run(shuffled, config, *, batches, state=None):
    workers, batch_size, world_size = config
    make = endless_factory(shuffled, batch_size, workers)
    return run_ranks(make, world_size, 1, stop_after=batches, state=state)


@pytest.fixture(scope="module")
def endless_continuous(shuffled):
    return endless_run(shuffled, (0, 8, 1), batches=ENDLESS_BATCHES)[0]


@pytest.mark.parametrize(
    "before, head, after",
    [
        ((0, 4, 1), 7, (0, 2, 2)),  # 28 positions, then 2 ranks of 2
        ((0, 3, 2), 5, (0, 11, 1)),  # 30 positions on 2 ranks, then 1 rank of 11
        ((2, 4, 1), 7, (1, 2, 2)),  # with worker processes before and after
    ],
)
def test_resumed_endless_mixture_equals_the_continuous_run(
    shuffled, endless_continuous, before, head, after
):
    first, state = endless_run(shuffled, before, batches=head)
    rest = (len(endless_continuous) - len(first)) // (after[1] * after[2])
    second, _ = endless_run(shuffled, after, batches=rest, state=state)
    assert len(first) + len(second) == len(endless_continuous)
    assert first + second == endless_continuous


def test_a_cursor_from_before_the_source_epoch_keys_is_refused(shuffled):
    """Before, a shuffle-mode source was read as a plain dataset under the loader's epoch
    (``Unkeyed``); its saved stream is not the one a resume would now continue, so the source's
    fingerprint differs and the load is refused, naming it. A concat-mode source, whose stream
    did not change, keeps its fingerprint: its cursors still load."""
    web, code = shuffled

    def loader(sources, weights):
        return DataLoader(Mixture(sources, weights), batch_size=4, seed=11)

    old = loader({"web": Unkeyed(web), "code": Unkeyed(code)}, ENDLESS_WEIGHTS)
    for _ in zip(old, range(3), strict=False):
        pass
    state = old.state_dict()
    with pytest.raises(StateDictError, match="source 'web': saved fingerprint"):
        loader({"web": web, "code": code}, ENDLESS_WEIGHTS).load_state_dict(state)
    concat = TokenDataset(web.shards[0].path, SEQ_LEN)
    old = loader({"web": Unkeyed(concat), "code": Unkeyed(code)}, {"web": 1})
    for _ in zip(old, range(3), strict=False):
        pass
    loader({"web": concat, "code": code}, {"web": 1}).load_state_dict(old.state_dict())
    assert MixtureSource(concat).fingerprint() == MixtureSource(Unkeyed(concat)).fingerprint()


def test_a_keyed_source_is_read_through_the_loader_only(shuffled):
    web, code = shuffled
    mixture = Mixture({"web": web, "code": code}, ENDLESS_WEIGHTS)
    with pytest.raises(ConfigError, match="sample_at"):
        mixture[0]
    order = mixture.loader_order(seed=11)
    web_position = next(p for p in range(8) if order.provenance(0, p)["source"] == "web")
    install_key(11, 0, web_position, Purpose.SAMPLE, reseed_globals=False)
    try:  # a key whose position draws from web, with an id of code: not the mixture's order
        with pytest.raises(ConfigError, match="draws from source 'web'"):
            mixture[mixture.offsets[1]]
    finally:
        clear_key()


@settings(max_examples=8, deadline=None)
@given(
    before=st.tuples(st.just(0), st.integers(1, 5), st.integers(1, 3)),
    after=st.tuples(st.just(0), st.integers(1, 5), st.integers(1, 3)),
    stop=st.integers(0, 60),
)
def test_random_resumes_of_the_endless_mixture_continue_its_stream(
    shuffled, endless_continuous, before, after, stop
):
    first, state = endless_run(shuffled, before, batches=stop // (before[1] * before[2]))
    rest = (len(endless_continuous) - len(first)) // (after[1] * after[2])  # >= 2 batches
    second, _ = endless_run(shuffled, after, batches=rest, state=state)
    assert len(first) + len(second) > len(endless_continuous) - after[1] * after[2]
    assert first + second == endless_continuous[: len(first) + len(second)]


def test_verify_passes_a_mixture_of_shuffle_mode_token_sources(shuffled):
    web, code = shuffled

    def factory():
        mixture = Mixture({"web": web, "code": code}, ENDLESS_WEIGHTS, samples_per_epoch=64)
        return DataLoader(mixture, batch_size=8, seed=11)

    report = verify_pipeline(factory, epochs=2, stops=(0.4,), num_workers=1)
    assert report.passed and report.samples_compared >= 128, report


def test_padding_positions_deliver_their_epochs_first_samples(shuffled):
    """On 7 ranks of 2, the last global batch of an 80-position epoch pads 4 positions, which
    deliver positions 0..3 of the same epoch (as DistributedSampler pads): an epoch-keyed source
    is located there, not at the next epoch's positions."""
    web, code = shuffled
    mixture = Mixture({"web": web, "code": code}, ENDLESS_WEIGHTS, samples_per_epoch=80)
    loaders = [DataLoader(mixture, batch_size=2, seed=11, rank=r, world_size=7) for r in range(7)]
    delivered = []  # in position order: global batch by global batch, rank by rank
    for global_batch in zip(*loaders, strict=True):
        for batch in global_batch:
            delivered.extend(tensors({f: batch[f][i] for f in FIELDS}) for i in range(2))
    assert len(delivered) == 84
    assert delivered[80:] == delivered[:4]

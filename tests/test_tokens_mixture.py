"""Two token corpora in a Mixture with an annealing phase: exact shares of tokens, exact resume."""

from __future__ import annotations

from typing import Any

import pytest
from resume_harness import digest
from tokens_factory import FIELDS, documents, run_ranks, write_megatron
from torch.utils.data import Dataset

from resumable_loader import DataLoader, sample_key
from resumable_loader.mixture import Mixture
from resumable_loader.tokens import TokenDataset

SEQ_LEN = 8
EPOCH = 80  # the loader's epoch, in windows
ANNEAL = 96  # global position (windows, all ranks) where the weights change, inside epoch 1
WEIGHTS = {"web": 3, "code": 1}
ANNEALED = {"web": 1, "code": 1}
NAMES = ("web", "code")


class Tagged(Dataset):
    """A source whose samples carry their source, window and key (the mixture passes them on)."""

    def __init__(self, name: str, inner: TokenDataset) -> None:
        self.name, self.inner = name, inner
        self.fingerprint = inner.fingerprint

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = sample_key()
        window = NAMES.index(self.name) * 10**6 + index  # source and window in one id
        return {"id": window, "epoch": key.epoch, "pos": key.position, **self.inner[index]}


@pytest.fixture(scope="module", params=["concat", "shuffle"])
def corpora(request, tmp_path_factory):
    """Both sources cut one way. In shuffle mode a source's document order follows the
    loader's epoch (the sample key), not its own: still exact on resume (tested here)."""
    d = tmp_path_factory.mktemp("mixture")
    mode = request.param
    web = TokenDataset(write_megatron(d, "web", documents(2, 60)), SEQ_LEN, documents=mode)
    code = TokenDataset(write_megatron(d, "code", documents(3, 8)), SEQ_LEN, documents=mode)
    assert len(code) < 30 < len(web)  # code (~15 windows) runs out and starts its next epochs
    return web, code


def factory(corpora, batch_size, workers):
    web, code = corpora

    def make(rank, world_size):
        mixture = Mixture(
            {"web": Tagged("web", web), "code": Tagged("code", code)},
            WEIGHTS,
            phases=[(ANNEAL, ANNEALED)],
            samples_per_epoch=EPOCH,
        )
        return DataLoader(
            mixture,
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
    for epoch, _, window, tokens in continuous:  # the mixture delivers the source's window
        dataset = (web, code)[window // 10**6]
        keyed = {"seed": 11, "epoch": epoch} if dataset.documents == "shuffle" else {}
        sample = dataset.window(window % 10**6, **keyed)
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

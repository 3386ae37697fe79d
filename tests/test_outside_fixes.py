"""What an outside test of the docs found (issue 21, item 7): each now a named, typed error.

A Mixture given an IterableDataset or None, a Mixture source that changed length after the
Mixture was built, a null token inside a Parquet token list, a TokenDataset dtype that
contradicts the .idx header, tokenize into a missing directory or of a missing input.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_tokens_tokenize import inputs, tokenizer  # noqa: F401 (fixtures)
from tokens_factory import documents, write_megatron
from torch.utils.data import IterableDataset

from resumable_loader import DataLoader, Mixture
from resumable_loader.cli import main
from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.tokens import TokenDataset
from resumable_loader.tokens.tokenize import tokenize_files


class Stream(IterableDataset):
    def __iter__(self):
        yield from range(3)


@pytest.mark.parametrize("source", [Stream(), None], ids=["iterable", "none"])
def test_a_mixture_refuses_a_source_that_is_not_map_style_naming_it(source):
    with pytest.raises(
        ConfigError, match=r"Mixture source 'web' is (an IterableDataset|None), not"
    ):
        Mixture({"books": list(range(5)), "web": source}, {"books": 1, "web": 1})


def books_and_web(books: list) -> DataLoader:
    mixture = Mixture(
        {"books": books, "web": list(range(100, 120))}, {"books": 1, "web": 1}, samples_per_epoch=12
    )
    return DataLoader(mixture, batch_size=4, seed=3)


def test_a_mixture_refuses_a_source_that_grew_after_it_was_built():
    books = list(range(10))
    loader = books_and_web(books)
    next(iter(loader))
    books.append(10)  # a source that grows while the run goes on
    with pytest.raises(
        ConfigError, match=r"'books' had 10 samples when the Mixture was built and has 11 now"
    ):
        next(iter(loader))
    books.pop()  # back as it was: the stream goes on as if nothing happened
    reference = books_and_web(list(range(10)))
    next(iter(reference))
    assert next(iter(loader)).tolist() == next(iter(reference)).tolist()


def test_a_null_token_inside_a_parquet_list_is_a_shard_error_naming_file_row_and_column(tmp_path):
    path = tmp_path / "tokens.parquet"
    rows = pa.array([[1, 2, 3], [4, 5], [6, None, 8]], pa.list_(pa.int32()))
    pq.write_table(pa.table({"input_ids": rows}), path)
    with pytest.raises(
        ShardError, match=r"tokens.parquet: field 'input_ids', row 2: a null token inside the list"
    ):
        TokenDataset(str(path), 2)


def test_a_token_dtype_that_contradicts_the_idx_is_refused(tmp_path):
    prefix = write_megatron(tmp_path, "shard", documents(0, 5, vocab=1000), dtype=np.uint16)
    assert TokenDataset(prefix, 4, dtype=np.uint16).dtype == np.uint16  # agreeing: fine
    with pytest.raises(
        ShardError, match=r"shard.idx: field 'dtype' is uint16 in the .idx header, but dtype=uint32"
    ):
        TokenDataset(prefix, 4, dtype=np.uint32)


def tokenize_cli(inputs, tokenizer, out) -> int:  # noqa: F811 (fixture names)
    return main(["tokenize", *inputs, "--tokenizer", str(tokenizer), "--out", str(out), "--quiet"])


def test_tokenize_into_a_missing_directory_is_a_config_error_leaving_nothing(
    tmp_path,
    tokenizer,  # noqa: F811
    inputs,  # noqa: F811
    capsys,
):
    out = tmp_path / "not-there" / "web"
    with pytest.raises(ConfigError, match=r"the directory '.*not-there' does not exist; create"):
        tokenize_files(inputs, tokenizer=tokenizer, out=out, progress=False)
    assert tokenize_cli(inputs, tokenizer, out) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.tmp-*")) and not (tmp_path / "not-there").exists()


def test_tokenize_of_a_missing_input_is_a_shard_error_leaving_nothing(
    tmp_path,
    tokenizer,  # noqa: F811
    inputs,  # noqa: F811
    capsys,
):
    missing = str(tmp_path / "gone.jsonl")
    with pytest.raises(ShardError, match=r"gone.jsonl: no such input file \(1 of 4 inputs"):
        tokenize_files([*inputs, missing], tokenizer=tokenizer, out=tmp_path / "x", progress=False)
    assert tokenize_cli([*inputs, missing], tokenizer, tmp_path / "x") == 2
    assert "gone.jsonl: no such input file" in capsys.readouterr().err
    assert not list(tmp_path.glob("x.*"))

"""tokenize: text, JSON lines and Parquet to a Megatron shard that TokenDataset reads back."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from resumable_loader.cli import main
from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.tokens import TokenDataset
from resumable_loader.tokens.tokenize import tokenize_files

TEXTS = [f"document {i} tells of {'many ' * (i % 5)}things and {i * 7} more" for i in range(120)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A tiny BPE trained here (nothing can be downloaded), with an EOD token."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["<unk>", "<|endoftext|>"]
    bpe.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=special))
    bpe.save(str(path))
    return path


@pytest.fixture
def inputs(tmp_path):
    with open(tmp_path / "a.jsonl", "w") as f:
        for text in TEXTS[:70]:
            f.write(json.dumps({"text": text, "meta": 1}) + "\n")
    (tmp_path / "b.txt").write_text(TEXTS[70])
    pq.write_table(pa.table({"text": TEXTS[71:]}), tmp_path / "c.parquet", row_group_size=13)
    return [str(tmp_path / name) for name in ("a.jsonl", "b.txt", "c.parquet")]


def expected_tokens(tokenizer_path):
    bpe = Tokenizer.from_file(str(tokenizer_path))
    eod = bpe.token_to_id("<|endoftext|>")
    docs = [[*bpe.encode(t, add_special_tokens=False).ids, eod] for t in TEXTS]
    return docs, eod


def test_every_document_is_encoded_in_order_with_an_eod(tmp_path, tokenizer, inputs):
    written = tokenize_files(
        inputs, tokenizer=tokenizer, out=tmp_path / "out", batch_documents=16, progress=False
    )
    docs, eod = expected_tokens(tokenizer)
    ds = TokenDataset(tmp_path / "out", 8)
    assert written == (sum(map(len, docs)), len(docs)) == (ds.num_tokens, ds.num_documents)
    assert ds.dtype == np.uint16
    assert np.array_equal(ds.read(0, ds.num_tokens), np.concatenate(docs))
    ends = np.cumsum([len(d) for d in docs]) - 1
    assert (ds.read(0, ds.num_tokens)[ends] == eod).all()


def test_a_vocabulary_with_ids_past_its_size_is_written_in_a_dtype_that_holds_them(tmp_path):
    # 4 tokens, one of id 70,000: the dtype followed the count (uint16), and the cast raised
    vocab = {"<unk>": 0, "<|endoftext|>": 1, "the": 70_000, "loader": 2}
    sparse = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    sparse.pre_tokenizer = pre_tokenizers.Whitespace()
    sparse.save(str(tmp_path / "sparse.json"))
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "the loader"}) + "\n")
    tokenize_files(
        [tmp_path / "in.jsonl"],
        tokenizer=tmp_path / "sparse.json",
        out=tmp_path / "out",
        progress=False,
    )
    ds = TokenDataset(tmp_path / "out", 2)
    assert ds.dtype == np.int32 and ds.read(0, 3).tolist() == [70_000, 2, 1]


def test_command_line(tmp_path, tokenizer, inputs, capsys):
    status = main(
        ["tokenize", *inputs, "--tokenizer", str(tokenizer), "--out", str(tmp_path / "cli")]
    )
    assert status == 0
    docs, _ = expected_tokens(tokenizer)
    out = capsys.readouterr()
    assert f"{sum(map(len, docs))} tokens" in out.out and f"{len(docs)} documents" in out.out
    assert "100%" in out.err  # the progress bar
    assert TokenDataset(tmp_path / "cli", 8).num_documents == len(docs)


def test_failed_run_leaves_no_output(tmp_path, tokenizer, inputs):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(ShardError, match=r"bad\.jsonl: line 2 has no field 'text'; pass --field"):
        tokenize_files(
            [*inputs, str(tmp_path / "bad.jsonl")],
            tokenizer=tokenizer,
            out=tmp_path / "x",
            progress=False,
        )
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob("x.bin*"))


def test_named_errors(tmp_path, tokenizer, inputs, capsys):
    with pytest.raises(ConfigError, match="no end-of-document token <eos>; pass --eod"):
        tokenize_files(inputs, tokenizer=tokenizer, out=tmp_path / "x", eod="<eos>", progress=False)
    (tmp_path / "doc.md").write_text("x")
    with pytest.raises(ConfigError, match=r"doc\.md: tokenize reads \.txt, \.jsonl, \.parquet"):
        tokenize_files([str(tmp_path / "doc.md")], tokenizer=tokenizer, out=tmp_path / "x")
    with pytest.raises(ShardError, match=r"c\.parquet: no column 'body'"):
        tokenize_files(
            inputs[2:], tokenizer=tokenizer, out=tmp_path / "x", field="body", progress=False
        )
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    status = main(
        [
            "tokenize",
            str(tmp_path / "broken.jsonl"),
            "--tokenizer",
            str(tokenizer),
            "--out",
            str(tmp_path / "y"),
            "--quiet",
        ]
    )
    assert status == 2
    assert "broken.jsonl: line 1 is not JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("latin1.txt", "café".encode("latin-1"), r"latin1\.txt: not UTF-8 text \(byte 3"),
        ("s.jsonl", b'{"text": "ok"}\n{"text": "a\\ud800b"}\n', r"line 2: .*lone surrogate"),
        ("empty.jsonl", b"\n  \n", r"no documents .*nothing was written"),
    ],
)
def test_inputs_no_tokenizer_reads_are_named_and_leave_nothing(
    tmp_path, tokenizer, name, content, match
):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ShardError, match=match):
        tokenize_files(
            [str(tmp_path / name)], tokenizer=tokenizer, out=tmp_path / "x", progress=False
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_out_is_a_prefix_not_a_file_name(tmp_path, tokenizer, inputs):
    with pytest.raises(
        ConfigError, match=r"--out .*web\.bin: the output is a prefix .*--out .*web$"
    ):
        tokenize_files(inputs, tokenizer=tokenizer, out=tmp_path / "web.bin", progress=False)
    folder = tmp_path / "out"
    folder.mkdir()
    for out in (folder, f"{folder}/"):  # it would write the hidden out/.bin and out/.idx
        with pytest.raises(ConfigError, match=r"a directory, .*--out .*out/tokens"):
            tokenize_files(inputs, tokenizer=tokenizer, out=out, progress=False)
    assert list(folder.iterdir()) == []


def test_a_write_that_fails_is_a_shard_error_naming_the_output_and_leaves_nothing(
    tmp_path, tokenizer, inputs
):
    import resource

    out = tmp_path / "out"
    out.mkdir()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256, hard))  # a disk that fills at 256 bytes
    try:
        with pytest.raises(ShardError, match=r"out/web: cannot write the token shard \(File too"):
            tokenize_files(inputs, tokenizer=tokenizer, out=out / "web", progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(out.iterdir()) == []  # no .tmp- file either


def test_sigterm_leaves_no_partial_output_and_a_killed_writers_files_go(tmp_path, tokenizer):
    """A scheduler's SIGTERM mid-run removes the partial .bin like Ctrl-C; a SIGKILL's leftovers
    (no cleanup runs) are removed by the next writer of the same prefix."""
    import signal
    import subprocess
    import sys
    import time

    big = tmp_path / "big.jsonl"
    big.write_text(
        "".join(json.dumps({"text": TEXTS[i % 120] * 20}) + "\n" for i in range(200_000))
    )
    out = tmp_path / "out"
    out.mkdir()
    command = [
        sys.executable,
        "-m",
        "resumable_loader",
        "tokenize",
        str(big),
        "--tokenizer",
        str(tokenizer),
        "--out",
        str(out / "web"),
        "--quiet",
    ]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        job = subprocess.Popen(command)
        deadline = time.monotonic() + 60
        while not list(out.glob("web.bin.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        job.send_signal(sig)
        assert job.wait(60) == (143 if sig == signal.SIGTERM else -9)
        left = sorted(p.name for p in out.iterdir())
        assert left == ([] if sig == signal.SIGTERM else [f"web.bin.tmp-{job.pid}"])
    (tmp_path / "small.txt").write_text(TEXTS[0])
    tokenize_files(
        [str(tmp_path / "small.txt")], tokenizer=tokenizer, out=out / "web", progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == ["web.bin", "web.idx"]

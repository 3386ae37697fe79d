"""The ``resumable-loader index`` and ``inspect`` commands: output, exit codes, no tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest
from shard_factory import write_parquet_shards, write_tar, write_tar_shards

from resumable_loader.cli import main
from resumable_loader.index.sharded import ShardedIndex


def test_index_then_inspect_tar(tmp_path, capsys):
    write_tar_shards(tmp_path, num_shards=3, samples_per_shard=4)
    out = tmp_path / "cli.rlindex"
    pattern = str(tmp_path / "shard-{0000..0002}.tar")
    assert main(["index", pattern, "--out", str(out), "--workers", "2", "--quiet"]) == 0
    printed = capsys.readouterr()
    fingerprint = ShardedIndex.load(out).fingerprint
    assert "indexed 12 samples in 3 tar shards" in printed.out and fingerprint in printed.out
    assert printed.err == ""
    assert main(["inspect", str(out), "--show", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"fingerprint: {fingerprint}\n" in printed and "samples:     12\n" in printed
    assert "extensions:  bin, cls, json\n" in printed
    assert "shards:      3 (samples per shard: 4 to 4)\n" in printed
    assert "shard-0001.tar: 4 samples" in printed and "... and 1 more shards" in printed


def test_index_then_inspect_parquet(tmp_path, capsys):
    paths = write_parquet_shards(tmp_path, num_shards=2, rows_per_shard=5)
    out = tmp_path / "p.rlindex"
    assert main(["index", *paths, "--out", str(out), "--quiet"]) == 0
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "format:      parquet" in printed and "columns:     id, text, value" in printed


def test_index_with_skip_lists_what_it_left_out(tmp_path, capsys):
    path = write_tar(tmp_path / "dup.tar", [("a.x", b"1"), ("a.x", b"2"), ("b.x", b"3")])
    out = tmp_path / "s.rlindex"
    assert main(["index", path, "--out", str(out), "--on-error", "skip", "--quiet"]) == 0
    assert "skipped 1 unreadable" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped:     1 (built with on_error='skip')" in printed
    assert f"  {path}: sample 'a' has two 'x' members" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "{tmp}/none.rlindex"], "inspect: error: {tmp}/none.rlindex: index file not"),
        (["index", "{tmp}/absent.tar", "--quiet"], "index: error: {tmp}/absent.tar: shard not"),
        (["index", "{tmp}/*.tar"], "index: error: {tmp}/*.tar: the pattern matches no file"),
        (["index", "{tmp}/bad.tar", "--quiet"], "index: error: {tmp}/bad.tar: member 'README'"),
        (["index", "{tmp}/bad.tar", "--out", "{tmp}/"], "index: error: --out {tmp}/: a directory"),
    ],
)
def test_errors_are_one_line_with_status_2(tmp_path, capsys, argv, message):
    if "bad.tar" in argv[1]:
        write_tar(tmp_path / "bad.tar", [("README", b"x")])
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"resumable-loader {message.format(tmp=tmp_path)}")
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.slow
def test_python_dash_m_runs_the_command(tmp_path):
    paths = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=2)
    out = tmp_path / "m.rlindex"
    done = subprocess.run(
        [sys.executable, "-m", "resumable_loader", "index", *paths, "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "indexed 2 samples" in done.stdout and "indexing [" in done.stderr


@pytest.mark.parametrize("missing", ["tokenizers", "tqdm"])
def test_tokenize_without_its_extra_gives_the_install_command(
    tmp_path, capsys, monkeypatch, missing
):
    monkeypatch.setitem(sys.modules, missing, None)  # import of it raises ImportError
    (tmp_path / "a.txt").write_text("hello")
    argv = ["tokenize", str(tmp_path / "a.txt"), "--tokenizer", "t.json", "--out", "x"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"resumable-loader tokenize: error: tokenize needs the optional package {missing!r}: "
        "pip install 'resumable-loader[tokens]' (tokenizers and tqdm)\n"
    )


def test_help_is_plain_text_and_every_command_has_a_description(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and "Deterministic, resumable data loading" in top
    for command in ("index", "inspect", "demo", "verify", "checkpoint", "tokenize"):
        assert f"    {command} " in top
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "interrupted mid-epoch and resumed" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--stop-at", "x,4", "'x,4': give comma-separated numbers, e.g. 0.3,0.7"),
        ("--batch-sizes", "2.5", "'2.5': give comma-separated integers, e.g. 3,8"),
    ],
)
def test_a_list_of_numbers_that_is_not_one_is_named(capsys, option, value, said):
    """argparse named the lambda ("invalid <lambda> value"), not what a value should be."""
    with pytest.raises(SystemExit) as exited:
        main(["verify", "module:factory", option, value])
    assert exited.value.code == 2
    assert f"argument {option}: {said}" in capsys.readouterr().err

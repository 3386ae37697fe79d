"""Shard-list expansion: paths, globs, brace patterns, fsspec URLs; stat and open errors."""

from __future__ import annotations

import uuid

import fsspec
import pytest

from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.index.paths import expand_shards, is_url, open_shard, stat_shard


@pytest.fixture
def shard_dir(tmp_path):
    for i in (2, 0, 1):
        (tmp_path / f"train-{i:06d}.tar").write_bytes(b"x" * (i + 1))
    return tmp_path


@pytest.fixture
def memory_dir():
    """A fresh directory on fsspec's in-memory filesystem."""
    filesystem = fsspec.filesystem("memory")
    root = f"/shards-{uuid.uuid4().hex}"
    for i in range(3):
        filesystem.pipe(f"{root}/part-{i}.tar", b"y" * (i + 10))
    yield f"memory://{root}"
    filesystem.rm(root, recursive=True)


class TestExpand:
    def test_plain_paths_keep_their_order(self, shard_dir):
        paths = [str(shard_dir / "train-000002.tar"), str(shard_dir / "train-000000.tar")]
        assert expand_shards(paths) == paths

    def test_glob_is_sorted(self, shard_dir):
        assert expand_shards(str(shard_dir / "train-*.tar")) == [
            str(shard_dir / f"train-{i:06d}.tar") for i in range(3)
        ]

    def test_brace_pattern_keeps_zero_padding(self, shard_dir):
        assert expand_shards(shard_dir / "train-{000000..000002}.tar") == [
            str(shard_dir / f"train-{i:06d}.tar") for i in range(3)
        ]

    def test_brace_pattern_need_not_exist_until_read(self, tmp_path):
        shards = expand_shards(str(tmp_path / "s-{0..1}.tar"))
        assert shards == [str(tmp_path / "s-0.tar"), str(tmp_path / "s-1.tar")]
        with pytest.raises(ShardError, match=r"s-0\.tar: shard not found"):
            stat_shard(shards[0])

    def test_file_urls_and_home_become_local_paths(self, shard_dir, monkeypatch):
        monkeypatch.setenv("HOME", str(shard_dir))
        assert expand_shards([f"file://{shard_dir}/train-000000.tar", "~/train-000001.tar"]) == [
            str(shard_dir / "train-000000.tar"),
            str(shard_dir / "train-000001.tar"),
        ]

    def test_fsspec_urls_expand_through_their_filesystem(self, memory_dir):
        expected = [f"{memory_dir}/part-{i}.tar" for i in range(3)]
        assert expand_shards(f"{memory_dir}/part-*.tar") == expected
        assert expand_shards(f"{memory_dir}/part-{{0..2}}.tar") == expected
        assert all(is_url(url) for url in expected) and not is_url("file:///x.tar")

    def test_a_shard_named_again_through_a_link_is_refused(self, tmp_path):
        real = tmp_path / "a.tar"
        real.write_bytes(b"x")
        (tmp_path / "link.tar").symlink_to(real)
        with pytest.raises(ConfigError, match=r"link\.tar: named twice .*as .*a\.tar: the same"):
            expand_shards([str(real), str(tmp_path / "link.tar")])

    def test_a_file_named_with_glob_characters_is_itself(self, tmp_path):
        """A file named "shard [v2].tar" is that file, not a pattern matching "shard v.tar"."""
        named = tmp_path / "shard [v2].tar"
        named.write_bytes(b"x")
        assert expand_shards(str(named)) == [str(named)]
        with pytest.raises(ShardError, match=r"write \[\[\] for a \["):
            expand_shards(str(tmp_path / "other [v2].tar"))

    @pytest.mark.parametrize(
        ("spec", "error", "match"),
        [
            ("nothing-*.tar", ShardError, r"nothing-\*\.tar: the pattern matches no file"),
            ("train-{0..2.tar", ConfigError, r"train-\{0\.\.2\.tar: Unbalanced braces"),
            ([], ConfigError, "no shards given"),
            (["a.tar", "b.tar", "a.tar"], ConfigError, r"a\.tar: named twice"),
            # one slash after the scheme: not a local path under the working directory
            ("s3:/bucket/a-{0..1}.tar", ConfigError, r"write 's3://bucket/a-0\.tar'"),
        ],
    )
    def test_bad_specs(self, shard_dir, monkeypatch, spec, error, match):
        monkeypatch.chdir(shard_dir)
        with pytest.raises(error, match=match):
            expand_shards(spec)


class TestStatAndOpen:
    def test_local_size_and_mtime(self, shard_dir):
        path = str(shard_dir / "train-000002.tar")
        size, mtime = stat_shard(path)
        assert size == 3 and mtime == (shard_dir / "train-000002.tar").stat().st_mtime
        with open_shard(path) as f:
            assert f.read() == b"xxx"

    def test_remote_size_and_stamp(self, memory_dir):
        size, stamp = stat_shard(f"{memory_dir}/part-1.tar")
        assert size == 11 and isinstance(stamp, float) and stamp > 0
        with open_shard(f"{memory_dir}/part-1.tar") as f:
            f.seek(5)
            assert f.read(2) == b"yy"

    @pytest.mark.parametrize("name", ["absent.tar", "memory:///absent-shard.tar"])
    def test_missing_shard_names_the_file(self, tmp_path, name):
        path = name if "://" in name else str(tmp_path / name)
        with pytest.raises(ShardError, match=rf"{path}: shard not found"):
            stat_shard(path)
        with pytest.raises(ShardError, match=rf"{path}: shard not found"):
            open_shard(path)

    def test_a_directory_is_not_a_shard(self, tmp_path, memory_dir):
        with pytest.raises(ShardError, match="cannot open the shard"):
            open_shard(str(tmp_path))
        with pytest.raises(ShardError, match="not a file"):
            stat_shard(memory_dir)

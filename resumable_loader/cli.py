"""The ``resumable-loader`` command: build and inspect indexes, run the demo, verify pipelines."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from resumable_loader.errors import ConfigError, ResumableLoaderError


def _index(args: argparse.Namespace) -> int:
    from resumable_loader.index.file import SUFFIX
    from resumable_loader.index.sharded import ShardedIndex

    if args.out is not None and (os.path.isdir(args.out) or not os.path.basename(args.out)):
        raise ConfigError(
            f"--out {args.out}: a directory; name the index file in it, e.g. --out "
            f"{os.path.join(args.out, 'train' + SUFFIX)}"
        )
    if args.out is not None and not args.out.endswith(SUFFIX):
        # refused, not renamed: the file is where the user said, or nowhere
        raise ConfigError(
            f"--out {args.out}: index files end in {SUFFIX}, the name the datasets load as an "
            f"index and no shard has; use --out {os.path.splitext(args.out)[0]}{SUFFIX}"
        )
    publish = args.publish or args.index_url is not None
    if publish:
        _check_publishable(args.shards, args.index_url)
    index = ShardedIndex.build(
        args.shards,
        out=args.out,
        workers=args.workers,
        progress=not args.quiet,
        on_error=args.on_error,
    )
    print(f"indexed {index.num_samples} samples in {index.num_shards} {index.format} shards")
    print(f"wrote {index.path} (fingerprint {index.fingerprint})")
    if publish:
        from resumable_loader.index.remote import remote_index_url, upload

        url = args.index_url or remote_index_url(index.shard_urls)
        upload(index.path, url)
        print(f"published it to {url}")
    if index.skipped:
        print(f"skipped {len(index.skipped)} unreadable samples or files (listed in the index)")
    if args.length is not None:
        from resumable_loader.packing.lengths import sidecar_path, write_lengths
        from resumable_loader.sources import ParquetDataset, TarShardDataset

        reader = TarShardDataset if index.format == "tar" else ParquetDataset
        lengths = write_lengths(reader(index), args.length)
        print(f"wrote {sidecar_path(index.path)} ({len(lengths)} lengths of {args.length!r})")
    return 0


def _check_publishable(shards: Sequence[str], index_url: str | None) -> None:
    """Refuse, before scanning, to publish the index of local shards (datasets find it beside
    them) or to a local --index-url (other nodes could not fetch it)."""
    from resumable_loader.index.paths import expand_shards, is_url

    first = expand_shards(shards)[0]
    if not is_url(first):
        raise ConfigError(
            f"--publish/--index-url: {first} is a local file, whose index is kept beside it; "
            "publish the index of shards in storage (s3://..., gs://...)"
        )
    if index_url is not None and not is_url(index_url):
        raise ConfigError(
            f"--index-url {index_url}: not a URL; name a place in storage, such as "
            f"{first.rpartition('/')[0]}/index.rlindex"
        )


def _inspect(args: argparse.Namespace) -> int:
    from resumable_loader.index.sharded import ShardedIndex

    index = ShardedIndex.load(args.index, verify=not args.no_verify)
    shards, sizes = index.header["shards"], index.shard_sizes
    rows = [
        ("format", f"{index.format} (index version {index.header['version']})"),
        ("fingerprint", index.fingerprint),
        ("samples", index.num_samples),
        ("shards", f"{index.num_shards} (samples per shard: {sizes.min()} to {sizes.max()})"),
        ("bytes", sum(entry["bytes"] for entry in shards)),
        ("extensions" if index.format == "tar" else "columns", ", ".join(index.fields)),
        ("skipped", f"{len(index.skipped)} (built with on_error={index.header['on_error']!r})"),
    ]
    for label, value in rows:
        print(f"{label + ':':<13}{value}")
    for line in index.skipped[: args.show]:
        print(f"  {line}")
    print("shard list:")
    for entry in shards[: args.show]:
        print(f"  {entry['url']}: {entry['samples']} samples, {entry['bytes']} bytes")
    if len(shards) > args.show:
        print(f"  ... and {len(shards) - args.show} more shards")
    return 0


def _count(text: str) -> int:
    """An argument that counts things to list: an int >= 0 (argparse names the option)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (an integer >= 0)")
    return value


def _verify_data(args: argparse.Namespace) -> int:
    from resumable_loader.sources.verify_data import verify_data

    shards = args.shards[0] if len(args.shards) == 1 else args.shards
    report = verify_data(shards, index=args.index)
    for problem in report.problems[: args.show]:
        print(problem)
    if len(report.problems) > args.show:
        print(f"... and {len(report.problems) - args.show} more (--show N lists N)")
    failed = report.failed
    verdict = f"{failed} of {report.samples} samples failed" if failed else "OK"
    where = _common_folder(report.shards)
    print(
        f"checked {report.samples} samples ({report.bytes} bytes) of {len(report.shards)} "
        f"shards in {where}: {verdict}"
    )
    return 0 if report.passed else 1


def _common_folder(urls: Sequence[str]) -> str:
    """The folder (or URL prefix) all of ``urls`` are in, to say which files were checked."""
    common: list[str] = []
    for names in zip(*(url.split("/")[:-1] for url in urls), strict=False):  # the shortest
        if len(set(names)) > 1:
            break
        common.append(names[0])
    return "/".join(common) or "/"


def _demo(args: argparse.Namespace) -> int:
    from resumable_loader.demo import run_demo

    return 0 if run_demo() else 1


def _verify(args: argparse.Namespace) -> int:
    from resumable_loader.errors import PipelineError
    from resumable_loader.verify import verify_pipeline

    try:
        report = verify_pipeline(
            args.factory,
            epochs=args.epochs,
            stops=args.stop_at,
            stop_batches=args.stop_at_batches,
            random_stops=args.random_stops,
            seed=args.seed,
            world_sizes=args.world_sizes,
            batch_sizes=args.batch_sizes,
            num_workers=args.num_workers,
        )
    except PipelineError as error:  # no verdict: not the FAIL status
        if args.traceback:
            traceback.print_exception(error.__cause__, file=sys.stderr)
        hint = "" if args.traceback else " (--traceback shows where)"
        print(f"resumable-loader verify: could not run: {error}{hint}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.passed else 1


def _checkpoint(args: argparse.Namespace) -> int:
    from resumable_loader.checkpoint import cli as checkpoint_cli

    if args.action == "inspect":
        return checkpoint_cli.inspect(args.directory, step=args.step, as_json=args.json)
    return checkpoint_cli.verify(args.directory, step=args.step)


def _tokenize(args: argparse.Namespace) -> int:
    from resumable_loader.tokens.tokenize import tokenize_files

    # SIGTERM (a job scheduler's stop) as an exception, so the partial output is removed as on
    # Ctrl-C; SIGKILL leaves it, and the next writer of the prefix removes it.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    tokens, documents = tokenize_files(
        args.inputs,
        tokenizer=args.tokenizer,
        out=args.out,
        field=args.field,
        eod=args.eod,
        progress=not args.quiet,
    )
    print(f"wrote {args.out}.bin and {args.out}.idx: {tokens} tokens, {documents} documents")
    return 0


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _numbers(kind: type) -> Callable[[str], list[Any]]:
    """An argument type: comma-separated numbers of ``kind`` (a bad one named, as argparse
    names its own types' errors)."""
    name = "integers" if kind is int else "numbers"

    def parse(text: str) -> list[Any]:
        try:
            return [kind(part) for part in text.split(",") if part]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give comma-separated {name}, e.g. {'3,8' if kind is int else '0.3,0.7'}"
            ) from None

    return parse


def parser() -> argparse.ArgumentParser:
    """The argument parser (one subcommand per job)."""
    main_parser = argparse.ArgumentParser(
        prog="resumable-loader",
        description="Deterministic, resumable data loading for PyTorch: build and inspect shard "
        "indexes, tokenize text, check checkpoints, run the demo, verify that your pipeline "
        "resumes exactly.",
        epilog="'resumable-loader COMMAND --help' describes a command.",
    )
    commands = main_parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="index tar or Parquet shards")
    index.add_argument("shards", nargs="+", help="paths, globs, brace patterns or URLs")
    index.add_argument(
        "--out", help="index file, ending in .rlindex (default: beside the first shard)"
    )
    index.add_argument("--workers", type=int, help="processes scanning shards")
    index.add_argument(
        "--publish",
        action="store_true",
        help="shards in storage: also upload the index beside the first shard, where datasets "
        "of these shards fetch it instead of scanning them",
    )
    index.add_argument(
        "--index-url",
        metavar="URL",
        help="shards in storage: upload the index to URL instead (datasets fetch it with "
        "index_url=URL)",
    )
    index.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="skip unreadable tar samples (listed in the index) or stop",
    )
    index.add_argument("--quiet", action="store_true", help="no progress bar")
    index.add_argument(
        "--length",
        metavar="FIELD[:KEY]",
        help="also store each sample's length (a .npy member's first axis, a JSON value's or "
        "a column's len(), a text member's words) beside the index, for Packed",
    )
    index.set_defaults(run=_index)

    inspect = commands.add_parser("inspect", help="show an index: counts, fields, fingerprint")
    inspect.add_argument("index", help="an index file (.rlindex)")
    inspect.add_argument("--show", type=_count, default=5, help="shards and skips to list")
    inspect.add_argument("--no-verify", action="store_true", help="do not stat the shards")
    inspect.set_defaults(run=_inspect)

    verify_data = commands.add_parser(
        "verify-data",
        help="read every sample back and check it against its index",
        description="Read every sample of tar shards and check its tar headers and each "
        "member's CRC32C against the index (what TarShardDataset(check='full') does per read); "
        "of Parquet shards, read every row group (page checksums, where the files have them), "
        "its row count and its values.",
        epilog="exit status: 0 every sample matched; 1 some did not (each is listed); 2 could "
        "not run (a missing or stale index)",
    )
    verify_data.add_argument("shards", nargs="+", help="shards, patterns or an index file")
    verify_data.add_argument(
        "--index",
        help="the index of the originals, when SHARDS are copies of them (checked against it)",
    )
    verify_data.add_argument("--show", type=_count, default=20, help="bad samples to list")
    verify_data.set_defaults(run=_verify_data)

    demo = commands.add_parser(
        "demo",
        help="interrupt and resume a run; show streams match",
        description="Write small tar shards of random images to a temporary directory, read "
        "them for two epochs with random crop, flip and noise (torch, numpy and random), once "
        "continuously and once interrupted mid-epoch and resumed from the saved cursor with "
        "another worker count and batch size, and compare the two streams: sample ids and a "
        "hash of every augmented tensor. Exit status 0 if they match, 1 if not.",
    )
    demo.set_defaults(run=_demo)

    verify = commands.add_parser(
        "verify",
        help="prove a pipeline of yours resumes exactly",
        description="Run FACTORY's pipeline continuously and interrupted, resumed with other "
        "worker counts, batch sizes and world sizes, and compare every sample.",
        epilog="exit status: 0 PASS, every sample compared matched; 1 FAIL, a divergence (the "
        "report names the run, position, sample and field); 2 could not run: a bad FACTORY or "
        "option, or the factory, dataset or collate_fn raised (one line; --traceback for the "
        "traceback)",
    )
    verify.add_argument(
        "factory",
        help="module:function or path/to/file.py:function returning a loader or (dataset, kw)",
    )
    verify.add_argument("--epochs", type=int, default=1)
    verify.add_argument("--stop-at", type=_numbers(float), help="fractions, e.g. 0.3,0.7")
    verify.add_argument("--stop-at-batches", type=_numbers(int), help="or global batches: 3,8")
    verify.add_argument("--random-stops", type=int, help="this many random stops instead")
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--world-sizes", type=_numbers(int), default=[1, 2])
    verify.add_argument("--batch-sizes", type=_numbers(int))
    verify.add_argument("--num-workers", type=int)
    verify.add_argument(
        "--traceback", action="store_true", help="on an error of your code, show its traceback"
    )
    verify.set_defaults(run=_verify)

    checkpoint = commands.add_parser("checkpoint", help="inspect or verify a training checkpoint")
    actions = checkpoint.add_subparsers(dest="action", required=True)
    for name, text in (
        ("inspect", "show the manifest, the components and their sizes, the loader's position"),
        ("verify", "check every file is there, readable and as the manifest says; exit 1 if not"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("directory", help="a checkpoint, or a Checkpointer's directory")
        action.add_argument("--step", type=int, help="that step's checkpoint, not the newest")
        if name == "inspect":
            action.add_argument("--json", action="store_true", help="the manifest as JSON")
    checkpoint.set_defaults(run=_checkpoint)

    tokenize = commands.add_parser(
        "tokenize", help="text to a Megatron .bin/.idx token shard (for TokenDataset)"
    )
    tokenize.add_argument("inputs", nargs="+", help=".txt, .jsonl or .parquet files, in order")
    tokenize.add_argument("--tokenizer", required=True, help="a tokenizers tokenizer.json")
    tokenize.add_argument("--out", required=True, help="output prefix (PREFIX.bin, PREFIX.idx)")
    tokenize.add_argument("--field", default="text", help="text field (.jsonl) or column")
    tokenize.add_argument("--eod", help="end-of-document token (default: <|endoftext|>, </s>...)")
    tokenize.add_argument("--quiet", action="store_true", help="no progress bar")
    tokenize.set_defaults(run=_tokenize)
    return main_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; the package's own errors print as one line and exit with status 2."""
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ResumableLoaderError as error:
        print(f"resumable-loader {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark in benchmarks/ and write their sections of a benchmarks.md.

Run: python benchmarks/run_all.py [--quick] [--only NAME ...] [--out PATH | --write-docs]

Each script runs as a subprocess from the repository root (its stderr shown live as progress,
its stdout captured). Its section, between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``,
is replaced with the exact command, the machine, the date, the time taken, the printed output
verbatim and any PNG the script reports as ``plot: PATH``. Sections are appended when missing;
everything else is left alone. By default the result goes to build/benchmarks/benchmarks.md (a
copy of docs/benchmarks.md with the rerun sections replaced, plots beside it), so a run leaves
the tracked docs alone; ``--write-docs`` updates docs/benchmarks.md and its plots in place.
``--quick`` passes ``--quick`` to the scripts that accept it (per their ``--help``) and shorter
sizes to others. A full run took 13 min on the shared 2-core machine (the sum of the sections'
own times in docs/benchmarks.md is 11 min).
"""

from __future__ import annotations

import argparse
import ast
import collections
import datetime
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
DOC = ROOT / "docs" / "benchmarks.md"
OUT = ROOT / "build" / "benchmarks" / "benchmarks.md"  # the default: not a tracked file
FIRST = (
    "bench_order",
    "bench_index",
    "bench_shuffle_buffer",
    "bench_shards",
    "bench_loader",
)  # then the rest
# Shorter runs for --quick, for scripts without a --quick flag; a flag their --help lacks is
# dropped (the script then runs in full).
QUICK_ARGS = {
    "bench_loader": ["--samples", "5000", "--repeats", "1"],
    "bench_index": ["--samples", "50000"],
}
HEARTBEAT = 15.0  # seconds between "still running" lines: some scripts are silent for minutes
PLOT = re.compile(r"^plot: (.+\.png)\s*$", re.MULTILINE)
TITLE = (
    "# Benchmarks\n\nMeasured figures; regenerate with `pip install -e '.[bench]'` (torchdata and "
    "matplotlib, for the peers and the plot), then `python benchmarks/run_all.py`.\n"
)


def scripts() -> list[Path]:
    found = [p for p in BENCHMARKS.glob("*.py") if p.name != Path(__file__).name]
    found = [p for p in found if not p.name.startswith("_")]
    rank = {name: i for i, name in enumerate(FIRST)}
    return sorted(found, key=lambda p: (rank.get(p.stem, len(FIRST)), p.name))


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import torch

    return (
        f"{len(os.sched_getaffinity(0))} CPUs (nproc), {cpu}, torch {torch.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}; "
        f"code at {revision()}"
    )


def revision() -> str:
    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", *arguments], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return (git("rev-parse", "--short", "HEAD") or "unknown") + (
        " + local changes" if dirty else ""
    )


def options(script: Path) -> str:
    """The script's ``--help`` text ("" if it has none)."""
    result = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True
    )
    return result.stdout if result.returncode == 0 else ""


def quick_arguments(script: Path, help_text: str) -> list[str]:
    """``--quick`` if the script takes it, else its QUICK_ARGS that its --help lists."""
    if "--quick" in help_text:
        return ["--quick"]
    pairs = QUICK_ARGS.get(script.stem, [])
    flags = [pairs[i : i + 2] for i in range(0, len(pairs), 2)]
    return [word for flag in flags if flag[0] in help_text for word in flag]


def arguments_for(script: Path, *, quick: bool, doc: Path) -> list[str]:
    """The script's arguments: the quick ones if asked, and ``--plot`` beside ``doc`` (when
    the script draws one), so a run that does not write the docs leaves their plots alone too.
    """
    help_text = options(script)
    arguments = quick_arguments(script, help_text) if quick else []
    if "--plot" in help_text:
        plot = doc.parent / f"{script.stem}.png"
        arguments += ["--plot", os.path.relpath(plot, ROOT)]
    return arguments


def run(
    script: Path, arguments: list[str], timeout: float, heartbeat: float = HEARTBEAT
) -> tuple[str, str, float]:
    """(stdout, status, seconds); stderr streams to ours, prefixed, and its tail is kept; every
    ``heartbeat`` seconds a "still running" line shows progress even when the script is silent.
    """
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(script.relative_to(ROOT)), *arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=15)

    def relay() -> None:
        for line in process.stderr:
            tail.append(line)
            print(f"  [{script.stem}] {line}", end="", file=sys.stderr, flush=True)

    finished = threading.Event()

    def beat() -> None:
        while not finished.wait(heartbeat):
            seconds = time.perf_counter() - started
            print(
                f"[run_all] {script.name} still running, {seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    relay_thread = threading.Thread(target=relay, daemon=True)
    relay_thread.start()
    beat_thread = threading.Thread(target=beat, daemon=True)
    beat_thread.start()
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    stdout = process.stdout.read()
    code = process.wait()
    finished.set()
    timer.cancel()
    beat_thread.join()
    relay_thread.join()
    process.stdout.close()
    process.stderr.close()
    seconds = time.perf_counter() - started
    if code == 0:
        return stdout, "ok", seconds
    reason = f"killed after the {timeout:.0f} s timeout" if code < 0 else f"exit code {code}"
    return stdout, f"FAILED ({reason}); last stderr lines:\n\n```text\n{''.join(tail)}```", seconds


def section(
    script: Path, command: str, host: str, stdout: str, status: str, seconds: float, out: Path
) -> str:
    """The section of ``script``'s run, its plots linked relative to ``out``."""
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### {script.name}",
        "",
        doc.splitlines()[0] if doc else "",
        "",
        f"- command: `{command}`",
        f"- machine: {host}",
        f"- date: {date}; took {seconds:.0f} s",
        "",
    ]
    if status != "ok":
        lines += [f"**{status}**", ""]
    lines += ["```text", stdout.rstrip("\n"), "```", ""]
    for match in PLOT.finditer(stdout):
        path = (ROOT / match.group(1)).resolve()
        lines += [f"![{path.stem}]({os.path.relpath(path, out.parent)})", ""]
    return "\n".join(lines)


def replace_section(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (passes --quick)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="e.g. bench_peers")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per script")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--out", type=Path, default=OUT, help=f"write here (default {OUT.relative_to(ROOT)})"
    )
    where.add_argument(
        "--write-docs", action="store_true", help=f"update {DOC.relative_to(ROOT)} in place"
    )
    args = parser.parse_args()
    doc = DOC if args.write_docs else args.out.resolve()
    todo = [s for s in scripts() if not args.only or s.stem in args.only]
    failed, host, started = [], machine(), time.perf_counter()
    for number, script in enumerate(todo, 1):
        arguments = arguments_for(script, quick=args.quick, doc=doc)
        command = " ".join(["python", str(script.relative_to(ROOT)), *arguments])
        print(f"[run_all] {number}/{len(todo)} {command}", file=sys.stderr, flush=True)
        stdout, status, seconds = run(script, arguments, args.timeout)
        print(
            f"[run_all] {script.name}: {status.splitlines()[0]}, {seconds:.0f} s", file=sys.stderr
        )
        if status != "ok":
            failed.append(script.name)
        # a new output starts as a copy of the docs, so its untouched sections stay comparable
        source = doc if doc.exists() else DOC
        text = source.read_text() if source.exists() else TITLE
        doc.parent.mkdir(parents=True, exist_ok=True)
        body = section(script, command, host, stdout, status, seconds, doc)
        doc.write_text(replace_section(text, script.stem, body))
    minutes = (time.perf_counter() - started) / 60
    print(f"[run_all] wrote {doc} ({len(todo)} scripts, {minutes:.1f} min)", file=sys.stderr)
    if failed:
        sys.exit(f"[run_all] failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

"""Every fenced ```python and ```bash block of README.md and docs/*.md runs as written.

Each file's blocks run in order as one program in a fresh temporary directory: python blocks in
one namespace (a later block uses the names an earlier one made), bash blocks with ``bash -e``.
The environment is a one-process job's (``MASTER_ADDR``/``MASTER_PORT``, ``RANK=0``,
``WORLD_SIZE=1``), so ``dist.init_process_group("gloo")`` runs as under torchrun.

A block that cannot run here (a package install, a live bucket) is preceded by the line
``<!-- snippet: skip (the reason) -->``; the reason is required. Other fences (```text, ```json,
```console) are output or formats, not run.

Run as a script (``python tests/test_docs_snippets.py FILE.md``) to run one file's blocks.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from resumable_loader.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*```(\w*)\s*$")  # indented too: a block inside a list item
SKIP = re.compile(r"^\s*<!-- snippet: skip \((.+)\) -->$")
RUN = ("python", "bash")
# the frameworks a file's blocks import (the test-frameworks extra)
REQUIRES = {"integrations.md": ("lightning", "accelerate", "transformers", "datasets")}


def blocks(path: Path) -> list[tuple[str, int, str]]:
    """The runnable blocks of ``path``: (language, first code line, code), skips left out."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, number = [], 0
    while number < len(lines):
        opening = FENCE.match(lines[number])
        if opening is None:
            number += 1
            continue
        end = next(i for i in range(number + 1, len(lines)) if lines[i].strip() == "```")
        before = next((lines[i] for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        if opening.group(1) in RUN and SKIP.match(before) is None:
            code = textwrap.dedent("\n".join(lines[number + 1 : end]))
            found.append((opening.group(1), number + 2, code))
        number = end + 1
    return found


def run_file(path: Path) -> None:
    """Run ``path``'s blocks in order in the current directory; raises at the first failure.

    Python code is compiled under the markdown file's name and line numbers, so a traceback
    points at the snippet's line in the file.
    """
    namespace: dict[str, object] = {"__name__": "__main__"}
    for language, line, code in blocks(path):
        print(f"--- {path.name}:{line} ({language})", flush=True)
        if language == "python":
            exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)
        else:
            subprocess.run(["bash", "-e", "-c", code], check=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _params() -> list[object]:
    return [pytest.param(path, id=path.name) for path in FILES if blocks(path)]


def test_every_file_has_its_blocks_found():
    """The parser sees the README's blocks (a broken fence pattern would pass every file)."""
    found = blocks(ROOT / "README.md")
    assert len(found) >= 8 and {language for language, _, _ in found} == set(RUN)


def test_skip_marks_give_a_reason_and_precede_a_runnable_block():
    for path in FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, text in enumerate(lines):
            if text.strip().startswith("<!-- snippet:"):
                assert SKIP.match(text), f"{path.name}:{number + 1}: {text}"
                following = next(t for t in lines[number + 1 :] if t.strip())
                assert FENCE.match(following).group(1) in RUN, f"{path.name}:{number + 1}"


@pytest.mark.slow  # 1-30 s a file on 2 idle cores (workers, frameworks); about 2 min in all
@pytest.mark.parametrize("path", _params())
def test_snippets_run_as_written(path, tmp_path):
    for module in REQUIRES.get(path.name, ()):
        pytest.importorskip(module, reason="pip install -e '.[test-frameworks]' -c constraints.txt")
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
    }
    done = run_python([__file__, str(path)], tmp_path, env)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


@pytest.mark.slow  # two ranks under torchrun, ~20 s
def test_distributed_snippets_run_on_two_ranks(tmp_path):
    """docs/distributed.md says every rank runs its snippets under torchrun: the page's blocks
    on two ranks (a load before rank 0's save was complete failed every run before the
    barrier)."""
    command = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = run_python([*command, __file__, str(ROOT / "docs" / "distributed.md")], tmp_path)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def run_python(arguments: list[str], cwd: Path, env: dict[str, str] | None = None) -> Any:
    """This Python on ``arguments`` in ``cwd``, output captured, within 300 s."""
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow  # two runs of a training script, ~5 s each
def test_the_checkpoint_example_resumes_when_run_again(tmp_path):
    """docs/checkpoint.md's first block is a training script that resumes: run twice in one
    directory (what a restarted job does), the second run takes its load branch."""
    language, _, code = blocks(ROOT / "docs" / "checkpoint.md")[0]
    assert language == "python" and "checkpointer.load(state)" in code
    checkpoints = tmp_path / "checkpoints"
    for run in (1, 2):
        done = run_python(["-c", code], tmp_path)
        assert done.returncode == 0, f"run {run}: {done.stderr[-6000:]}"
        if run == 1:
            newest = Checkpointer(checkpoints).steps()[-1]
            assert not list(checkpoints.glob("resume-*.json"))
    (record,) = checkpoints.glob("resume-*.json")  # written by load(), on the second run only
    assert json.loads(record.read_text())["step"] == newest


@pytest.mark.slow  # two processes, ~5 s each
def test_the_readmes_resume_runs_in_a_restarted_process(tmp_path):
    """The quick start saves, then resumes "after a restart": the resume block in a new process
    that builds the dataset, model and optimizer as the first block does (an unseeded toy
    dataset was other data there, and the loader refused the cursor)."""
    (_, _, train), (_, _, resume) = blocks(ROOT / "README.md")[:2]
    assert 'loader.load_state_dict(ckpt["loader"])' in resume
    setup = train.split("\nfor epoch")[0]  # the imports, data, model, optimizer and loader
    for code in (train, f"{setup}\n{resume}"):
        done = run_python(["-c", code], tmp_path)
        assert done.returncode == 0, done.stderr[-6000:]


if __name__ == "__main__":
    run_file(Path(sys.argv[1]))


def test_ci_runs_exactly_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r"Run the tests.*?```bash\n(.+?)\n```", readme, re.S).group(1)
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()

"""benchmarks/run_all.py: what it shows while the benchmarks run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path


def _run_all():
    """benchmarks/run_all.py as a module (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"
    spec = importlib.util.spec_from_file_location("run_all", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestHeartbeat:
    """Progress shows even while a script prints nothing for minutes."""

    def test_a_script_silent_on_stderr_still_shows_progress(self, tmp_path, monkeypatch, capsys):
        run_all = _run_all()
        monkeypatch.setattr(run_all, "ROOT", tmp_path)
        script = tmp_path / "silent.py"
        script.write_text("import time\ntime.sleep(1.0)\nprint('done')\n")
        stdout, status, _ = run_all.run(script, [], timeout=60, heartbeat=0.2)
        assert (stdout, status) == ("done\n", "ok")
        beats = re.findall(
            r"^\[run_all\] silent\.py still running, \d+ s$", capsys.readouterr().err, re.M
        )
        assert len(beats) >= 2


class TestWhereItWrites:
    """A run leaves the tracked docs/benchmarks.md and its plots alone unless --write-docs."""

    SCRIPT = (
        '"""A toy benchmark."""\n'
        "import argparse, pathlib\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--plot', type=pathlib.Path, default='docs/bench_toy.png')\n"
        "args = parser.parse_args()\n"
        "args.plot.parent.mkdir(parents=True, exist_ok=True)\n"
        "args.plot.write_bytes(b'png')\n"
        "print('measured 42')\n"
        "print(f'plot: {args.plot}')\n"
    )

    def _tree(self, tmp_path, monkeypatch):
        run_all = _run_all()
        (tmp_path / "benchmarks").mkdir()
        (tmp_path / "benchmarks" / "bench_toy.py").write_text(self.SCRIPT)
        doc = tmp_path / "docs" / "benchmarks.md"
        doc.parent.mkdir()
        doc.write_text("# Benchmarks\n\nkept text\n")
        for name, value in {
            "ROOT": tmp_path,
            "BENCHMARKS": tmp_path / "benchmarks",
            "DOC": doc,
            "OUT": tmp_path / "build" / "benchmarks" / "benchmarks.md",
            "machine": lambda: "test machine",
        }.items():
            monkeypatch.setattr(run_all, name, value)
        return run_all, doc

    def test_the_default_writes_a_copy_under_build(self, tmp_path, monkeypatch):
        run_all, doc = self._tree(tmp_path, monkeypatch)
        monkeypatch.setattr("sys.argv", ["run_all.py"])
        run_all.main()
        assert doc.read_text() == "# Benchmarks\n\nkept text\n"
        assert not (tmp_path / "docs" / "bench_toy.png").exists()
        out = (tmp_path / "build" / "benchmarks" / "benchmarks.md").read_text()
        assert out.startswith("# Benchmarks\n\nkept text\n") and "measured 42" in out
        assert (
            "--plot build/benchmarks/bench_toy.png" in out and "![bench_toy](bench_toy.png)" in out
        )
        assert (tmp_path / "build" / "benchmarks" / "bench_toy.png").read_bytes() == b"png"

    def test_write_docs_updates_the_docs_and_their_plots(self, tmp_path, monkeypatch):
        run_all, doc = self._tree(tmp_path, monkeypatch)
        monkeypatch.setattr("sys.argv", ["run_all.py", "--write-docs"])
        run_all.main()
        text = doc.read_text()
        assert "kept text" in text and "<!-- bench:bench_toy -->" in text and "measured 42" in text
        assert "![bench_toy](bench_toy.png)" in text
        assert (tmp_path / "docs" / "bench_toy.png").read_bytes() == b"png"
        assert not (tmp_path / "build").exists()

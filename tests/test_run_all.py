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

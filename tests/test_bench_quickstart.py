"""bench/bench_quickstart.py: it runs quickstart.sh's own commands, times them, and reports.

The real job takes minutes; here quickstart.sh's commands get short options appended (argparse
takes the last value), as in test_readme.py, so the same steps run in seconds.
"""

import sys
from pathlib import Path

import pytest

from utils import UserError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_quickstart
from common import shell_commands

SHORT = {
    "tools/synthetic.py": ["--num_ids", "12"],
    "train.py": ["--total_epoch", "1", "--height", "64", "--width", "32", "--batchsize", "8"],
    "test.py": ["--which_epoch", "last"],
}


@pytest.fixture
def short_quickstart(monkeypatch):
    """quickstart.sh's commands, shortened."""

    def commands(text, prefix):
        return [argv + SHORT.get(argv[0], []) for argv in shell_commands(text, prefix)]

    monkeypatch.setattr(bench_quickstart, "shell_commands", commands)


def test_runs_every_quickstart_step_and_reports(short_quickstart, tmp_path, capsys):
    steps = bench_quickstart.main(["--keep", str(tmp_path / "run")])
    out = capsys.readouterr().out
    scripts = [command.split()[0] for command, _ in steps]
    assert scripts == ["tools/synthetic.py", "prepare.py", "train.py", "test.py", "evaluate.py",
                       "evaluate_rerank.py", "demo.py"]  # fmt: skip
    assert all(seconds > 0 for _, seconds in steps)
    assert f"{sum(s for _, s in steps):7.1f} s  in all" in out
    # What the evaluate scripts printed, as they printed it.
    assert "$ python evaluate.py --json results/quickstart.json" in out
    assert "$ python evaluate_rerank.py --json results/quickstart_rerank.json" in out
    assert out.count("Rank@1:") == 2 and "written by model/quickstart epoch last" in out
    assert "machine: " in out
    # The scripts wrote their files in the run folder.
    assert (tmp_path / "run/results/quickstart_ranking.png").is_file()
    assert (tmp_path / "run/model/quickstart/opts.yaml").is_file()


def test_a_failing_step_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(
        bench_quickstart, "shell_commands", lambda text, prefix: [["prepare.py", "--data_dir", "absent"]]
    )
    with pytest.raises(
        UserError,
        match=r"quickstart step failed \(its error output is above\): prepare.py --data_dir absent$",
    ):
        bench_quickstart.main(["--keep", str(tmp_path / "run")])


def test_keep_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty folder"):
        bench_quickstart.main(["--keep", str(tmp_path)])
    assert (tmp_path / "notes.txt").read_text() == "mine"

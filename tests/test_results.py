"""The README's results are the logged runs: each figure of a benchmark row is in that run's output.

The figures in README.md are copied from the output of the bench/ scripts, which is kept in
bench/logs/ (one file per run, its first "$ " line the command). These tests catch a figure that was
mistyped, or left behind when a benchmark was run again.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "bench" / "logs"
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def results_section() -> str:
    return (ROOT / "README.md").read_text().split("\n## Results\n")[1].split("\n## ")[0]


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def logs_by_command() -> dict[str, str]:
    """'python bench/X.py ARGS' -> the output of the run of that command."""
    logs = {}
    for path in sorted(LOGS.glob("*.txt")):
        text = path.read_text()
        command = next(line[2:].strip() for line in text.splitlines() if line.startswith("$ "))
        assert command not in logs, f"two logs of {command}"
        logs[command] = text
    return logs


def test_every_benchmark_figure_is_in_its_log():
    logs = logs_by_command()
    rows = [cells(line) for line in results_section().splitlines() if "| `python bench/" in line]
    assert len(rows) == 28
    for what, command, result in rows:
        command = command.strip("`")
        assert command in logs, f"{what}: no run of {command!r} in bench/logs/"
        logged = set(NUMBER.findall(logs[command]))
        missing = [number for number in NUMBER.findall(result) if number not in logged]
        assert not missing, f"{what}: {missing} are not in the output of {command}"


def test_cuhk01_table_is_the_logged_run():
    # The command in the table's title paragraph ("**Real pedestrians: CUHK01 ...** `python ...`").
    command = re.search(
        r"\*\*Real pedestrians: CUHK01.*?`(python bench/bench_real\.py[^`]*)`", results_section(), re.DOTALL
    )
    log = logs_by_command()[command.group(1)]
    # Logged: model, start, input, epochs (s/epoch), re-ranking, 6 metrics, train, test: the markdown
    # table after its header row and |---| row.
    logged = [cells(line) for line in log.split("\n| model | start |")[1].split("\n\n")[0].splitlines()[2:]]
    # README: model, epochs (s/epoch), training, re-ranking, 6 metrics; the first three cells are
    # empty on a model's second and third rows.
    table = results_section().split("| model | epochs (s/epoch) |")[1].split("\n\n")[0]
    readme = [cells(line) for line in table.splitlines()[2:]]  # after the header's end and |---|
    assert len(logged) == len(readme) and len(readme) % 3 == 0  # 3 rankings of each model
    for ours, theirs in zip(readme, logged, strict=True):
        assert ours[3:] == theirs[4:11]  # re-ranking and the metrics
        if ours[1]:
            assert (ours[1], ours[2]) == (theirs[3], theirs[11])


def test_the_readme_example_output_is_the_quickstarts():
    # The indented block after "Each script prints, for example" is evaluate.py's output in the
    # logged quickstart run.
    text = (ROOT / "README.md").read_text().split("Each script prints, for example")[1]
    example = [line.strip() for line in text.split("\n\n")[1].splitlines()]
    log = {line.strip() for line in logs_by_command()["python bench/bench_quickstart.py"].splitlines()}
    assert len(example) == 5 and all(line in log for line in example), example

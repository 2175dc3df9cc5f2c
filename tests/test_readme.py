"""Every command of README.md and quickstart.sh runs, on tiny data and short settings.

The commands are read from the files themselves, so the documentation cannot drift from the code.
They run in a sandbox folder whose parent holds tiny raw datasets where the README expects them
(`../Market`, `../DukeMTMC-reID`, ...). Options appended to each command keep it short (argparse
takes the last value): one epoch at 64x32 from scratch, on the CPU.
"""

import importlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

import synthetic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import shell_commands

SHORT = {
    "tools/synthetic.py": ["--num_ids", "16"],
    "train.py": [
        "--total_epoch",
        "1",
        "--height",
        "64",
        "--width",
        "32",
        "--batchsize",
        "8",  # the strong recipe's --num_instances 4: 2 identities per batch
        "--no-pretrained",
        "--gpu_ids",
        "-1",
        "--overwrite",
    ],
    "test.py": ["--which_epoch", "last", "--gpu_ids", "-1"],  # 1 epoch: no net_059.pth
    "evaluate_gpu.py": ["--gpu_ids", "-1"],
    "index.py": ["--gpu_ids", "-1"],
    "search.py": ["--gpu_ids", "-1"],
}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)


def readme_commands() -> list[list[str]]:
    """The commands of every bash block but the classic sequence, which test_classic_readme.py runs."""
    text = (ROOT / "README.md").read_text()
    classic = bash_blocks(text.split("## The classic flow on Market-1501")[1])[0]
    return [
        cmd for block in bash_blocks(text) if block != classic for cmd in shell_commands(block, "python ")
    ]


def quickstart_commands() -> list[list[str]]:
    return shell_commands((ROOT / "quickstart.sh").read_text(), "$PY ")


def run(argv: list[str]) -> None:
    script, args = argv[0], argv[1:]
    extra = SHORT.get(script, [])
    if script == "demo.py" and "--query_index" in args:
        extra = ["--query_index", "1"]  # the tiny data has fewer than 778 queries
    module = importlib.import_module(Path(script).stem)
    module.main(args + extra)


def rename_all(src: Path, dst: Path, rename) -> None:
    """Copy a raw Market-layout tree but its junk images, giving every image the name `rename(name)`."""
    for path in src.rglob("[0-9]*.jpg"):
        target = dst / path.parent.relative_to(src) / rename(path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def other_datasets(market: Path, parent: Path) -> None:
    """The README's other datasets, made from the synthetic Market-layout one by renaming."""

    def parts(name):
        pid, cam, frame = re.match(r"(-?\d+)_c(\d+)s\d+_(\d+)_", name).groups()
        return pid, int(cam), frame

    def duke(name):
        pid, cam, frame = parts(name)
        return f"{pid}_c{cam}_f{frame}.jpg"

    def cuhk03(name):
        pid, cam, frame = parts(name)
        return f"{pid}_c{cam}_{frame}.png"

    def veri(name):
        pid, cam, frame = parts(name)
        return f"{pid}_c{cam:03d}_{frame}_0.jpg"

    folders = ["bounding_box_train", "bounding_box_test", "query"]
    for name, rename in [("DukeMTMC-reID", duke), ("cuhk03-np/detected", cuhk03), ("VeRi", veri)]:
        for folder in folders:
            rename_all(market / folder, parent / name / folder, rename)
    msmt = parent / "MSMT17_V1"
    lists = {
        "train": "list_train.txt",
        "val": "list_val.txt",
        "query": "list_query.txt",
        "gallery": "list_gallery.txt",
    }
    sources = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    for split, list_name in lists.items():
        lines = []
        files = sorted((market / sources.get(split, "bounding_box_train")).glob("*.jpg"))
        if split in ("train", "val"):  # one image per id in val
            first = {}
            for f in files:
                first.setdefault(f.name[:4], f)
            files = [f for f in files if (first[f.name[:4]] == f) == (split == "val")]
        for f in files:
            pid, cam, frame = parts(f.name)
            if pid.startswith("-") or pid == "0000":
                continue
            rel = f"{pid}/{pid}_{frame[-3:]}_{cam:02d}_0303morning_{frame[-4:]}_0.jpg"
            target = msmt / ("train" if split in ("train", "val") else "test") / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            lines.append(f"{rel} {int(pid)}")
        (msmt / list_name).write_text("\n".join(lines) + "\n")


def own_data(market: Path, parent: Path) -> None:
    """The README's own data: `my_people/<name>/<name>_cam<C>_<k>.jpg`, one folder per person of the
    synthetic dataset, named, and `my_crops/cam<C>/frame_<k>.jpg`, unlabelled crops."""
    count = {}
    for path in sorted(market.glob("bounding_box_*/[0-9]*.jpg")):
        pid, cam = re.match(r"(\d+)_c(\d+)", path.name).groups()
        if int(pid) == 0:
            continue
        name = f"person{chr(ord('a') + int(pid) % 26)}{int(pid)}"
        k = count[name] = count.get(name, -1) + 1
        target = parent / "my_people" / name / f"{name}_cam{cam}_{k:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    for k, path in enumerate(sorted((market / "query").glob("*.jpg"))[:12]):
        target = parent / "my_crops" / f"cam{1 + k % 2}" / f"frame_{k:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    work = tmp_path / "reid"
    work.mkdir()
    synthetic.generate(tmp_path / "Market", num_ids=12, junk=4, distractors=4, seed=1)
    other_datasets(tmp_path / "Market", tmp_path)
    own_data(tmp_path / "Market", tmp_path)
    shutil.copyfile(next((tmp_path / "Market/query").glob("*.jpg")), work / "photo.jpg")  # the README's photo
    monkeypatch.chdir(work)
    run(["prepare.py"])  # the first command of the classic block, which test_classic_readme.py runs
    return work


def test_readme_has_the_two_quick_start_commands():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start")[1].split("\n## ")[0]
    assert [line.split("#")[0].strip() for line in bash_blocks(quick)[0].splitlines()] == [
        "./quickstart.sh",
        "./run_tests.sh",
    ]
    assert "bash run_tests.sh" in (ROOT / ".ci/run").read_text()


def test_every_readme_command_runs(sandbox):
    cmds = readme_commands()
    assert len(cmds) >= 10 and ["demo.py", "--query_index", "777"] in cmds
    for argv in cmds:
        run(argv)
    assert (sandbox / "demo.png").is_file()
    assert (sandbox / "model/warm5_s1_b8_lr2_p0.5/opts.yaml").is_file()
    # Your own data: from folders of people and of crops to answers and pages.
    assert (sandbox / "my_report/index.html").is_file() and (sandbox / "report/index.html").is_file()
    results = json.loads((sandbox / "my_search/results.json").read_text())
    assert results["threshold"] is not None and results["queries"][0]["answer"] in ("match", "no match")
    assert results["index_size"] == 12 and (sandbox / "my_search/index.html").is_file()


def test_quickstart_commands_run(sandbox):
    cmds = quickstart_commands()
    assert [c[0] for c in cmds] == ["tools/synthetic.py", "prepare.py", "train.py", "test.py", "evaluate.py",
                                    "evaluate_rerank.py", "demo.py"]  # fmt: skip
    for argv in cmds:
        run(argv)
    assert (sandbox / "results/quickstart_ranking.png").is_file()
    assert (sandbox / "results/quickstart.json").is_file()

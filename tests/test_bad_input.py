"""Bad input, in every script: one line naming the option or file and what to do, a non-zero exit
status, and nothing lost. Also the file modes and the disk errors of utils' atomic writes."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import data
import test as extract
import utils
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "option", "value"),
    [
        ("train.py", "--batchsize", "0"),
        ("train.py", "--lr", "0"),
        ("train.py", "--lr", "nan"),
        ("train.py", "--total_epoch", "0"),
        ("train.py", "--warm_epoch", "-1"),
        ("train.py", "--weight_decay", "-0.1"),
        ("train.py", "--erasing_p", "1.5"),
        ("train.py", "--droprate", "1.5"),
        ("train.py", "--droprate", "1"),
        ("train.py", "--height", "0"),
        ("train.py", "--num_workers", "-1"),
        ("train.py", "--gpu_ids", "abc"),
        ("test.py", "--batchsize", "0"),
        ("test.py", "--num_workers", "-1"),
        ("test.py", "--gpu_ids", "0,x"),
        ("test.py", "--ms", "1,-0.9"),
        ("demo.py", "--top_k", "0"),
        ("evaluate_gpu.py", "--gpu_ids", "cpu"),
        ("evaluate_rerank.py", "--k1", "0"),
    ],
)
def test_bad_option_is_one_line_naming_it(script, option, value, tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / script), option, value],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]  # argparse prints the usage, then one error line
    assert last.startswith(f"{script}: error: ") and option in last, run.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_result_file_that_cannot_be_written_stops_before_extracting(tiny_prepared, tiny_trained, monkeypatch):
    monkeypatch.chdir(tiny_trained)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    def extract_called(*args, **kwargs):
        raise AssertionError("extracted before checking the output")

    monkeypatch.setattr(utils.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(extract, "extract", extract_called)
    with pytest.raises(
        UserError, match=r"cannot write out/f.mat: the file system is read-only: choose a writable"
    ):
        extract.main(
            [
                "--name",
                "tiny",
                "--test_dir",
                str(tiny_prepared),
                "--gpu_ids",
                "-1",
                "--result_file",
                "out/f.mat",
            ]
        )


def test_decompression_bomb_is_named(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is then over twice the limit
    with pytest.raises(UserError, match=rf"{path}: too large to read safely .*; crop or shrink the image"):
        data.load_image(path)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        utils.save_yaml(tmp_path / "a.yaml", {"a": 1})
        utils.torch_save({"w": 1}, tmp_path / "b.pth")
    finally:
        os.umask(old)
    for name in ("a.yaml", "b.pth"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (errno.ENOSPC, "the disk is full: free some space"),
        (errno.EROFS, "the file system is read-only: choose a writable folder"),
        (errno.EACCES, "permission denied: choose a folder you can write to"),
    ],
)
def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, code, message):
    path = tmp_path / "f.yaml"
    utils.save_yaml(path, {"old": True})

    def fail(tmp):
        Path(tmp).write_text("half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(UserError, match=f"cannot write {path}: {message}"):
        utils.atomic_write(path, fail)
    assert utils.load_yaml(path) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["f.yaml"]  # no temporary file left

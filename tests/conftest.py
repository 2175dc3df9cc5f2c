"""Shared fixtures: tiny datasets in the prepared ImageFolder layout, made on the fly."""

import numpy as np
import pytest
from PIL import Image


def write_prepared_tree(root, n_ids=4, per_id=3, size=(32, 16), seed=0):
    """A tiny prepare.py-style tree: each identity a distinct colour, Market-1501 file names."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(n_ids, 3))

    def save(split, pid, cam, frame, colour):
        folder = root / split / f"{pid:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(-20, 20, size=(*size, 3))
        pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
        name = f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg"
        Image.fromarray(pixels).save(folder / name)

    for i, colour in enumerate(colours):
        pid = i + 1
        for k in range(per_id):
            save("train_all", pid, 1 + k % 2, k, colour)
            save("val" if k == 0 else "train", pid, 1 + k % 2, k, colour)
            save("query" if k == 0 else "gallery", pid, 1 + k % 3, 100 + k, colour)
            if k < 2:  # two multi-query images in the query's camera
                save("multi-query", pid, 1, 200 + k, colour)
    return root


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    return write_prepared_tree(tmp_path_factory.mktemp("tiny") / "pytorch")


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, tiny_prepared):
    """A folder holding model/tiny, a ResNet-18 trained for one epoch on tiny_prepared at 64x32."""
    import os

    import train

    root = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train.main(["--name", "tiny", "--data_dir", str(tiny_prepared), "--backbone", "resnet18",
                    "--no-pretrained", "--gpu_ids", "-1", "--height", "64", "--width", "32",
                    "--batchsize", "4", "--total_epoch", "1"])  # fmt: skip
    finally:
        os.chdir(cwd)
    return root

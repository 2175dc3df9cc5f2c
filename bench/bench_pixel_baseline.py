"""How hard is the synthetic dataset? Raw-pixel nearest neighbour on its query and gallery.

Each image's pixels (128x64x3, ImageNet-normalised) are one L2-normalised feature vector; the
evaluation is the toolkit's own (Market-1501 protocol). Compare with a trained model: the
quickstart's ResNet-18 (see the README's results table).

    python bench/bench_pixel_baseline.py --seed 0
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from common import ROOT


def pixel_features(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from data import IMAGENET_MEAN, IMAGENET_STD, parse_name

    paths = sorted(folder.glob("*.jpg"))
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in paths])
    pixels = ((pixels - IMAGENET_MEAN) / IMAGENET_STD).reshape(len(paths), -1).astype(np.float32)
    pixels /= np.linalg.norm(pixels, axis=1, keepdims=True)
    pids, cams = np.array([parse_name(p.name) for p in paths]).T
    return pixels, pids, cams


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import synthetic
    from metrics import evaluate, feature_distance_chunks, format_results

    print(f"$ python bench/bench_pixel_baseline.py {' '.join(sys.argv[1:])}")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "synthetic"
        synthetic.generate(raw, seed=args.seed)  # the quickstart's dataset
        q_f, q_pid, q_cam = pixel_features(raw / "query")
        g_f, g_pid, g_cam = pixel_features(raw / "bounding_box_test")
    results = evaluate(feature_distance_chunks(q_f, g_f), q_pid, q_cam, g_pid, g_cam)
    print(
        format_results(
            {
                **results,
                "result_file": f"raw pixels of synthetic seed {args.seed}",
                "protocol": "single-query",
            }
        )
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

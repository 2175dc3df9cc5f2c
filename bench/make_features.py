"""Write a random features file of a real benchmark's size, for timing the evaluate scripts.

Identities are clusters: each image's feature is its identity's centre plus a camera offset and noise,
L2-normalised, so the metrics land in a realistic range (the numbers themselves mean nothing). Junk
(-1) and distractor (0) gallery images get features of their own.

    python bench/make_features.py --size market --output /tmp/market.mat
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from features import save_features

# query, gallery images; ids; cameras; junk (-1) and distractor (0) gallery images
SIZES = {
    "market": {
        "n_query": 3368,
        "n_gallery": 19732,
        "n_ids": 750,
        "n_cams": 6,
        "n_junk": 3819,
        "n_distractors": 2798,
    },
    "msmt17": {
        "n_query": 11659,
        "n_gallery": 82161,
        "n_ids": 3060,
        "n_cams": 15,
        "n_junk": 0,
        "n_distractors": 0,
    },
}


def make_features(n_query, n_gallery, n_ids, n_cams, n_junk, n_distractors, dim=512, noise=3.2, seed=0):
    """The features dict of `save_features`; `noise` sets the difficulty (3.2: Rank@1 ~0.98, mAP ~0.73)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids + 1, dim)) / np.sqrt(dim) * 1.5
    cam_offsets = rng.standard_normal((n_cams + 1, dim)) / np.sqrt(dim) * 0.5

    def features(pid, cam):
        f = centres[pid] + cam_offsets[cam] + rng.standard_normal((len(pid), dim)) / np.sqrt(dim) * noise
        return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)

    # Queries: one image per (id, camera) while there are cameras left, ids 1..n_ids.
    q_pid = np.resize(np.arange(1, n_ids + 1), n_query)
    q_cam = rng.integers(1, n_cams + 1, n_query)
    n_people = n_gallery - n_junk - n_distractors
    g_pid = np.concatenate(
        [rng.integers(1, n_ids + 1, n_people), np.full(n_junk, -1), np.zeros(n_distractors, int)]
    )
    g_cam = rng.integers(1, n_cams + 1, n_gallery)
    g_f = features(np.maximum(g_pid, 0), g_cam)
    # Junk and distractors: random directions, unrelated to any identity.
    other = g_pid <= 0
    g_f[other] = rng.standard_normal((int(other.sum()), dim)).astype(np.float32)
    g_f[other] /= np.linalg.norm(g_f[other], axis=1, keepdims=True)
    return {
        "query_f": features(q_pid, q_cam),
        "query_label": q_pid,
        "query_cam": q_cam,
        "gallery_f": g_f,
        "gallery_label": g_pid,
        "gallery_cam": g_cam,
        "model": f"random clusters, seed {seed}",
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="market")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    feats = make_features(**SIZES[args.size])
    save_features(args.output, feats)
    print(
        f"{args.output}: {len(feats['query_f'])} queries x {len(feats['gallery_f'])} gallery, "
        f"{feats['query_f'].shape[1]}-d "
        f"({time.perf_counter() - start:.1f} s)"
    )


if __name__ == "__main__":
    main()

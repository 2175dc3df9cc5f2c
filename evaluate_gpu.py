"""Evaluate a features file with the distances computed by torch, on a GPU when there is one.

Same metric and output as evaluate.py (`evaluation.evaluate`); only the distance -q.g is computed
differently: with torch on the device of `--gpu_ids` (the CPU when CUDA is not available), one chunk
of queries at a time, copied back for the ranking.

    python evaluate_gpu.py --result_file pytorch_result.mat --gpu_ids 0
"""

import argparse

import torch

from evaluation import add_evaluation_args, evaluate, load_evaluation_set, query_chunk_rows, report
from utils import HelpFormatter, add_device_args, run_main, select_device, setup_logging


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_evaluation_args(parser)
    add_device_args(parser, model=False)
    return parser.parse_args(argv)


@torch.inference_mode()
def torch_distance_chunks(q_f, g_f, device: torch.device):
    """Distances -q.g (rows, n_g) of consecutive query chunks, computed on `device`, as numpy arrays."""
    g = torch.from_numpy(g_f).to(device)
    q = torch.from_numpy(q_f).to(device)
    rows = query_chunk_rows(len(g_f))
    for start in range(0, len(q), rows):
        yield torch.neg(q[start : start + rows] @ g.T).cpu().numpy()


def main(argv=None) -> None:
    args = parse_args(argv)
    device = select_device(args.gpu_ids, setup_logging())
    feats, q_f, info = load_evaluation_set(args)
    dist_chunks = torch_distance_chunks(q_f, feats["gallery_f"], device)
    results = evaluate(
        dist_chunks, feats["query_label"], feats["query_cam"], feats["gallery_label"], feats["gallery_cam"]
    )
    report({**info, "distance": f"-q.g (torch, {device})", **results}, args.json)


if __name__ == "__main__":
    run_main(main)

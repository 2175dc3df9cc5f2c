"""Evaluate a features file with the distances computed by torch, on a GPU when there is one.

Same metric and output as evaluate.py (`metrics.evaluate`); only the distance -q.g is computed
differently: with torch on the device of `--gpu_ids` (the CPU when CUDA is not available), one chunk
of queries at a time, copied back for the ranking.

    python evaluate_gpu.py --result_file pytorch_result.mat --gpu_ids 0
"""

import torch

from metrics import evaluate_file, evaluation_parser, query_chunk_rows
from utils import add_device_args, run_main, select_device, setup_logging


@torch.inference_mode()
def torch_distance_chunks(q_f, g_f, device: torch.device):
    """Distances -q.g (rows, n_g) of consecutive query chunks, computed on `device`, as numpy arrays."""
    g = torch.from_numpy(g_f).to(device)
    q = torch.from_numpy(q_f).to(device)
    rows = query_chunk_rows(len(g_f))
    for start in range(0, len(q), rows):
        yield torch.neg(q[start : start + rows] @ g.T).cpu().numpy()


def main(argv=None) -> list[dict]:
    """Evaluate; return the results, one dict per query set (see metrics.evaluate_file)."""
    parser = evaluation_parser(__doc__)
    add_device_args(parser, model=False)
    args = parser.parse_args(argv)
    device = select_device(args.gpu_ids, setup_logging())
    return evaluate_file(
        args, lambda q_f, g_f: torch_distance_chunks(q_f, g_f, device), f"-q.g (torch, {device})"
    )


if __name__ == "__main__":
    run_main(main)

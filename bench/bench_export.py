"""ONNX export of every backbone of the table (and PCB): does it export, and how close is onnxruntime?

For each network (random weights: the parity does not depend on training), export.py's graph is
written (deploy.export_onnx) and run by onnxruntime on real images of the synthetic dataset (the
first 32 query and 128 gallery images, at the backbone's input size); the output is the largest
difference of the unit features against PyTorch and whether every query's top-10 ranking is the
same (deploy.check_parity), with the export time and file size, or the reason the export failed.

    python bench/bench_export.py                                   # every row of model.BACKBONES, and PCB
    python bench/bench_export.py --backbones resnet50,mobilenet_v2,PCB,swin_base_patch4_window7_224
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, prepared_synthetic


def main(argv=None) -> None:
    import torch

    from data import list_images
    from deploy import TOLERANCE, FeatureGraph, OnnxFeatures, check_parity, export_onnx
    from features import extract
    from model import BACKBONES, ModelConfig, build_model
    from utils import UserError

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", default="all", help="comma-separated names of the table, PCB; or all")
    args = parser.parse_args(argv)
    names = [*BACKBONES, "PCB"] if args.backbones == "all" else args.backbones.split(",")
    print(f"$ python bench/bench_export.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"machine: {machine()}")
    print("| network | input | export | size | max abs difference | top-10 rankings identical |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        data = prepared_synthetic(Path(tmp), num_ids=40)
        query = list_images(data / "query", recursive=True)[:32]
        images = query + list_images(data / "gallery", recursive=True)[:128]
        for name in names:
            pcb = name == "PCB"
            config = ModelConfig(nclasses=100, backbone="resnet50" if pcb else name, PCB=pcb)
            torch.manual_seed(0)
            model = build_model(config).eval()
            size, cpu = (config.height, config.width), torch.device("cpu")
            path = Path(tmp) / f"{name}.onnx"
            start = time.perf_counter()
            try:
                export_onnx(model, config, path, {"model": name})
            except UserError as err:
                print(f"| {name} | {size[0]}x{size[1]} | failed: {err} | | | |", flush=True)
                continue
            seconds = time.perf_counter() - start
            graph = FeatureGraph(model, imagenet=True, flip=True, l2=True)
            torch_f = extract(graph, images, size, cpu, compute=lambda g, x: g(x), normalize=False)
            onnx_f = extract(
                OnnxFeatures(path), images, size, cpu, compute=lambda o, x: o(x), normalize=False
            )
            parity = check_parity(torch_f, onnx_f, len(query))
            ok = parity["max_abs_diff"] <= TOLERANCE and not parity["rankings_differ"]
            print(
                f"| {name} | {size[0]}x{size[1]} | {seconds:.1f} s | {path.stat().st_size / 2**20:.0f} MB "
                f"| {parity['max_abs_diff']:.1e}{'' if ok else ' (over 1e-4)'} "
                f"| {len(query) - parity['rankings_differ']} of {len(query)} |",
                flush=True,
            )
            path.unlink()
    print(f"machine: {machine()}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

"""Deployment: the retrieval feature as an ONNX model, checked against PyTorch, and run by onnxruntime.

The exported graph computes what test.py computes (features.embed_batch at scale 1): the embedding of
an image plus that of its horizontal flip, L2-normalised (PCB: per part), from a batch of images
(B, 3, height, width) of any batch size. Three steps can each be left out of the graph, so that an
application can do them itself: the ImageNet normalisation of the input (`imagenet`: then the graph
takes RGB values in [0, 1]), the flip sum (`flip`) and the L2 normalisation (`l2`). The ONNX file
records in its metadata (keys `reid.*`) the input size, which steps it holds, and which model and
checkpoint it was made from (features.provenance), so a features file written with it names both.

`export_onnx` writes the file and `check_parity` compares it with PyTorch on real images: the largest
difference of the features and whether the top-10 gallery ranking of every query is the same.
`OnnxFeatures` runs a file with onnxruntime for test.py's `--backend onnxruntime`.

onnx, onnxscript (the exporter) and onnxruntime are imported only here, inside the functions.
"""

import io
from pathlib import Path

import numpy as np
import torch

from data import IMAGENET_MEAN, IMAGENET_STD
from features import embed_batch
from model import ModelConfig
from utils import UserError, atomic_write

INPUT, OUTPUT = "images", "features"  # the graph's input and output names
TOLERANCE = 1e-4  # the largest difference of unit features (float32) an export may have
EXPORT_INSTALL = "pip install onnx onnxscript onnxruntime"


def _require(module: str):
    """Import an optional package, or stop with the command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"the ONNX features need the package {module}: {EXPORT_INSTALL}") from None


class FeatureGraph(torch.nn.Module):
    """The module that is exported: images (B, 3, H, W) -> features (B, D)."""

    def __init__(self, model: torch.nn.Module, imagenet: bool, flip: bool, l2: bool):
        super().__init__()
        self.model, self.imagenet, self.flip, self.l2 = model, imagenet, flip, l2
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.imagenet:
            images = (images - self.mean) / self.std
        return embed_batch(self.model, images, flip=self.flip, normalize=self.l2)


def export_onnx(
    model: torch.nn.Module,
    config: ModelConfig,
    path: str | Path,
    provenance: dict,
    imagenet: bool = True,
    flip: bool = True,
    l2: bool = True,
) -> None:
    """Write the ONNX model of `model` (eval mode, on the CPU) to `path`, atomically, with its metadata."""
    _require("onnxscript")
    onnx = _require("onnx")
    graph = FeatureGraph(model.float().cpu().eval(), imagenet, flip, l2).eval()
    example = torch.rand(2, 3, config.height, config.width)
    try:
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            dynamo=True,
            verbose=False,
        )
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds; say which model failed
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"cannot export {provenance['model']} to ONNX ({reason[:300]})") from None
    proto = program.model_proto
    metadata = {
        "input": f"{config.height}x{config.width}",
        "imagenet_normalisation": "in the graph" if imagenet else "outside",
        "flip": "in the graph" if flip else "outside",
        "l2": "in the graph" if l2 else "outside",
        **{key: value for key, value in provenance.items() if key != "extraction"},
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"reid.{key}", str(value)
    buffer = io.BytesIO()
    onnx.save_model(proto, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


class OnnxFeatures:
    """An exported file run by onnxruntime: call it on a batch of images (B, 3, H, W) -> features (B, D).

    `metadata` holds the file's `reid.*` metadata, without the prefix.
    """

    def __init__(self, path: str | Path, device: torch.device | None = None):
        ort = _require("onnxruntime")
        if not Path(path).is_file():
            raise UserError(f"{path}: no such ONNX file; write it with export.py")
        providers = ["CPUExecutionProvider"]
        if (
            device is not None
            and device.type == "cuda"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as PyTorch would use (torchrun: 1 each)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime's own error types
            raise UserError(
                f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0][:200]})"
            ) from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {
            key.removeprefix("reid."): value for key, value in props.items() if key.startswith("reid.")
        }
        self.path = Path(path)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: images.float().cpu().numpy()})[0]


def available() -> bool:
    """Whether the packages of export and onnxruntime are installed."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript", "onnxruntime"))


def export_checked(
    model: torch.nn.Module,
    config: ModelConfig,
    path: str | Path,
    provenance: dict,
    images: list[Path],
    n_query: int,
    imagenet: bool = True,
    flip: bool = True,
    l2: bool = True,
) -> dict:
    """export_onnx, then check_parity on `images` (the first n_query are the queries): the parity, or
    a UserError when it is over the tolerance (the file is then deleted)."""
    from features import extract

    export_onnx(model, config, path, provenance, imagenet, flip, l2)
    size, cpu = (config.height, config.width), torch.device("cpu")
    graph = FeatureGraph(model, imagenet, flip, l2)
    torch_f = extract(graph, images, size, cpu, compute=lambda g, x: g(x), normalize=not imagenet)
    onnx_f = extract(OnnxFeatures(path), images, size, cpu, compute=lambda o, x: o(x), normalize=not imagenet)
    if not l2:  # rank by the direction of the features, as the evaluation of unit features does
        torch_f, onnx_f = (
            f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12) for f in (torch_f, onnx_f)
        )
    parity = check_parity(torch_f, onnx_f, n_query)
    parity["summary"] = (
        f"max |difference| {parity['max_abs_diff']:.2e} (tolerance {TOLERANCE:.0e}); top-10 rankings identical "
        f"for {n_query - parity['rankings_differ']} of {n_query} queries (ties within the tolerance in any order)"
    )
    if parity["max_abs_diff"] > TOLERANCE or parity["rankings_differ"]:
        Path(path).unlink()
        raise UserError(
            f"{path}: the ONNX features differ from PyTorch's ({parity['summary']}); the file is deleted"
        )
    return parity


def check_parity(torch_f: np.ndarray, onnx_f: np.ndarray, n_query: int, top_k: int = 10) -> dict:
    """How far the ONNX features are from PyTorch's on the same images: the largest absolute
    difference, and how many of the first `n_query` rows (queries) rank the other rows (gallery)
    differently in their top_k (by metrics' distance). Images whose PyTorch distances to the query
    are within TOLERANCE of each other are ties: their order may differ."""
    from metrics import feature_distance_chunks

    dist = np.concatenate(list(feature_distance_chunks(torch_f[:n_query], torch_f[n_query:])))
    onnx_dist = np.concatenate(list(feature_distance_chunks(onnx_f[:n_query], onnx_f[n_query:])))
    top = np.argsort(dist, axis=1, kind="stable")[:, :top_k]
    onnx_top = np.argsort(onnx_dist, axis=1, kind="stable")[:, :top_k]
    # At each rank, the image PyTorch puts there and the one ONNX puts there must be at the same
    # distance (PyTorch's), to within the tolerance.
    gap = np.abs(np.take_along_axis(dist, top, axis=1) - np.take_along_axis(dist, onnx_top, axis=1))
    different = int(np.sum(np.any(gap > TOLERANCE, axis=1)))
    return {"max_abs_diff": float(np.max(np.abs(torch_f - onnx_f))), "rankings_differ": different}

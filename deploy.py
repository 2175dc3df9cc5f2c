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
`OnnxFeatures` runs a file with onnxruntime.

What test.py and index.py share to extract with it, and with several processes: `--backend` and
`--onnx` (`add_backend_args`; auto: onnxruntime on a CPU, exported and checked the first time,
`load_backend`), and under torchrun (`join_processes`) each process extracting its share of the images
(`shard`) and the first gathering them in order (`gather_shards`).

onnx, onnxscript (the exporter) and onnxruntime are imported only here, inside the functions.
"""

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from data import IMAGENET_MEAN, IMAGENET_STD
from features import TrainedModel, embed_batch, extraction_name
from model import ModelConfig
from utils import UserError, atomic_write

INPUT, OUTPUT = "images", "features"  # the graph's input and output names
TOLERANCE = 1e-4  # the largest difference of unit features (float32) an export may have
CHECK_QUERIES, CHECK_GALLERY = 32, 128  # the images an export of --backend auto is checked on
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
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not batch.dim_param:  # the exporter fixed the batch size: the file would take batches of 2 only
        raise UserError(
            f"cannot export {provenance['model']} to ONNX with any batch size (the exporter fixed it to "
            f"{batch.dim_value}: an operation of the network depends on it)"
        )
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


# ----------------------------------------------------------------------------------------------------
# Extracting with the export, and with several processes: test.py and index.py.


def add_backend_args(parser) -> None:
    """--backend and --onnx: what runs the model (test.py, index.py)."""
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime"],
        default="auto",
        help="what runs the model: PyTorch, or onnxruntime on the ONNX file of export.py; auto: "
        "onnxruntime on a CPU (the faster there) when it can, else PyTorch",
    )
    parser.add_argument(
        "--onnx", help="the ONNX file for --backend onnxruntime (default: model/NAME/net_EPOCH.onnx)"
    )


def exported_computation(args) -> bool:
    """Whether the run computes what an export does: one scale (test.py --ms), float32."""
    return getattr(args, "ms", "1") == "1" and not (args.fp16 or args.bf16)


def check_backend_args(parser, args) -> None:
    """Refuse --backend onnxruntime with what the exported graph does not compute."""
    if args.backend == "onnxruntime" and not exported_computation(args):
        drop = "--ms, --fp16, --bf16" if hasattr(args, "ms") else "--fp16, --bf16"
        parser.error(
            f"--backend onnxruntime runs the exported graph as it is: one scale, float32 (drop {drop})"
        )


def choose_backend(args, device) -> str:
    """--backend auto: onnxruntime on a CPU when its packages are installed and the run is what an
    export computes (one scale, float32); PyTorch otherwise."""
    if args.backend != "auto":
        return args.backend
    return "onnxruntime" if device.type == "cpu" and exported_computation(args) and available() else "torch"


class Backend(NamedTuple):
    """What features.extract runs: `model`, with `compute` (None: features.embed_batch) and
    `normalize` (whether the images are ImageNet-normalised before, or the graph does it)."""

    model: object  # the PyTorch model on the device, or an OnnxFeatures
    compute: object
    normalize: bool
    onnx_file: Path | None  # the ONNX file onnxruntime runs, for features.extraction_name


def load_backend(
    args,
    model: torch.nn.Module,
    config: ModelConfig,
    checkpoint: Path,
    origin: dict,
    device: torch.device,
    check_images: Callable[[], tuple[list[Path], list[Path]]],
    logger,
) -> Backend:
    """The --backend of add_backend_args for the trained `model` (its weights the file `checkpoint`,
    its provenance `origin`): onnxruntime on its ONNX file (onnx_runner) when choose_backend says so
    and that works, else `model` on `device`."""
    if choose_backend(args, device) == "onnxruntime":
        onnx = onnx_runner(args, model, config, checkpoint, origin, device, check_images, logger)
        if onnx is not None:
            return onnx
    return Backend(model.to(device, memory_format=torch.channels_last), None, True, None)


def onnx_runner(
    args,
    model: torch.nn.Module,
    config: ModelConfig,
    checkpoint: Path,
    origin: dict,
    device: torch.device,
    check_images: Callable[[], tuple[list[Path], list[Path]]],
    logger,
) -> Backend | None:
    """--backend onnxruntime: the exported model of `checkpoint` (--onnx, else beside it), exported
    first when --backend auto finds none, or one of an older checkpoint, and checked against PyTorch on
    the first CHECK_QUERIES and CHECK_GALLERY of `check_images()` (queries, gallery); None when auto's
    export fails. Under torchrun the first process exports, and every process then gets its outcome,
    so an error is the same one line from each."""
    path = Path(args.onnx or checkpoint.with_suffix(".onnx"))
    exported, failure = True, None
    if args.backend == "auto" and not args.onnx and int(os.environ.get("RANK", "0")) == 0:
        try:
            meta = OnnxFeatures(path).metadata if path.is_file() else {}
            if (
                meta.get("checkpoint_sha256") != origin["checkpoint_sha256"]
            ):  # absent, or of an older checkpoint
                queries, gallery = check_images()
                queries, gallery = queries[:CHECK_QUERIES], gallery[:CHECK_GALLERY]
                try:
                    parity = export_checked(model, config, path, origin, queries + gallery, len(queries))
                    logger.info(f"exported {path} for onnxruntime; against PyTorch: {parity['summary']}")
                except UserError as err:  # a network the exporter cannot take: PyTorch runs it
                    logger.warning(f"warning: {err}; extracting with PyTorch")
                    exported = False
        except UserError as err:
            failure = str(err)
    if dist.is_initialized():  # the other processes wait for the first one's export, and its outcome
        outcome = [exported, failure]
        dist.broadcast_object_list(outcome, src=0)
        exported, failure = outcome
    if failure:
        raise UserError(failure)
    if not exported:
        return None
    runner = OnnxFeatures(path, device)
    meta = runner.metadata
    if meta.get("flip") != "in the graph" or meta.get("l2") != "in the graph":
        if args.backend == "auto":  # an export made for an application that does these itself
            logger.warning(
                f"warning: {path} leaves the flip sum or the L2 normalisation out; extracting with PyTorch"
            )
            return None
        raise UserError(
            f"{path} leaves the flip sum or the L2 normalisation out; export it again without --no-flip/--no-l2"
        )
    if meta.get("checkpoint_sha256") != origin["checkpoint_sha256"]:
        raise UserError(f"{path} was exported from another checkpoint than {checkpoint}; export it again")
    # features.extract calls compute(runner, images), which is runner(images).
    return Backend(runner, OnnxFeatures.__call__, meta["imagenet_normalisation"] == "outside", path)


def with_backend(
    trained: TrainedModel, args, check_images: Callable[[], tuple[list[Path], list[Path]]], logger
) -> TrainedModel:
    """`trained` (features.load_for_extraction) run by the --backend of add_backend_args
    (load_backend), its provenance naming the ONNX file when onnxruntime runs it."""
    backend = load_backend(args, trained.model, trained.config, trained.checkpoint, trained.provenance,
                           trained.device, check_images, logger)  # fmt: skip
    if backend.onnx_file is None:
        return trained
    extraction = extraction_name((1.0,), trained.config, trained.amp_dtype, backend.onnx_file)
    return trained._replace(
        model=backend.model,
        compute=backend.compute,
        normalize=backend.normalize,
        provenance={**trained.provenance, "extraction": extraction},
    )


def world_and_rank() -> tuple[int, int]:
    """The number of processes torchrun started and this one's rank; (1, 0) without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def join_processes(world: int, device: torch.device) -> None:
    """Under torchrun (`world` > 1): join the other processes, with NCCL on GPUs and gloo on CPUs."""
    if world > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)


def leave_processes() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, world: int, rank: int) -> np.ndarray:
    """The indices of this process's share of `n` images: consecutive, in order, all sizes within one."""
    return np.array_split(np.arange(n), world)[rank]


def gather_shards(f: np.ndarray, world: int, rank: int) -> np.ndarray | None:
    """The features of every process's share, in order, on the first process (None on the others)."""
    if world == 1:
        return f
    shards = [None] * world if rank == 0 else None
    dist.gather_object(f, shards, dst=0)
    return np.concatenate(shards) if rank == 0 else None

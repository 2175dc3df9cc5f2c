"""Images -> features: the one extraction loop, and the features file.

Extraction (`embed_batch`, `extract`): the retrieval feature of an image is the model's embedding of
the image plus that of its horizontal flip, summed over the scales of `--ms` (each image resized
from the test-size tensor), then L2-normalised. PCB normalises each of its 6 part features and scales
it by 1/sqrt(6), so the concatenated vector has unit norm. test.py and demo.py both extract with
`extract`, which also runs any other function of the model over the images (demo.py's heatmaps).

The features file (`pytorch_result.mat` by default) is written by test.py with `save_features` and read
by evaluate.py, evaluate_gpu.py, evaluate_rerank.py and demo.py with `load_features`; both check the
contents the same way. It is a MATLAB .mat file with the classic keys:

    query_f (n_q, d) float32, query_label (n_q,) int, query_cam (n_q,) int    required
    gallery_f (n_g, d), gallery_label (n_g,), gallery_cam (n_g,)               required
    mquery_f (n_m, d), mquery_label (n_m,), mquery_cam (n_m,)                  multi-query (test.py --multi)
    query_path, gallery_path: lists of image paths                            optional (for demo.py)
    model: a string naming the model and epoch                                optional
    model_dir, model_epoch, checkpoint_sha256, extraction: strings           optional (provenance)

Feature rows are L2-normalised. Labels: -1 = junk image, 0 = distractor (Market-1501 naming).
The provenance keys say which model wrote the features (`provenance`): its folder, the epoch asked
for, the SHA-256 of the checkpoint file, and how the images were turned into features; the evaluate
scripts print them, and demo.py refuses to mix in the features of another model.

This module imports torch only inside the extraction functions, so the evaluate scripts start fast.
"""

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.io

from data import ImageFiles, test_transform
from utils import UserError, atomic_write, autocast, file_sha256, precision_name

# ----------------------------------------------------------------------------------------------------
# Extraction.


def embed_batch(model, images, scales=(1.0,), flip: bool = True, normalize: bool = True):
    """The retrieval features of a batch (B, 3, H, W): unit-norm rows (B, D), float32.

    Sums the embeddings of each image and its horizontal flip (`flip`), at every scale in `scales`
    (each resized from `images`), then L2-normalises (`normalize`). PCB: each of the 6 part features
    is normalised and scaled by 1/sqrt(6), so the concatenated (B, 6 * 2048) vector has unit norm.
    """
    import torch

    with torch.no_grad():
        total = 0
        for scale in scales:
            x = images
            if scale != 1:
                x = torch.nn.functional.interpolate(
                    images, scale_factor=scale, mode="bicubic", align_corners=False
                )
            for view in (x, x.flip(dims=[3])) if flip else (x,):
                total = total + model.embed(view.contiguous(memory_format=torch.channels_last)).float()
        if total.dim() == 3:  # PCB: (B, parts, 2048)
            if normalize:
                parts = total.shape[1]
                total = total / (total.norm(dim=2, keepdim=True).clamp_min(1e-12) * parts**0.5)
            return total.flatten(1)
        return total / total.norm(dim=1, keepdim=True).clamp_min(1e-12) if normalize else total


def extract(
    model,
    paths: list[Path],
    input_size: tuple[int, int],
    device,
    amp_dtype=None,
    batchsize: int = 64,
    num_workers: int = 0,
    scales=(1.0,),
    progress: bool = False,
    desc: str = "",
    compute=None,
    normalize: bool = True,
) -> np.ndarray:
    """The features (N, D) of the images `paths`, in order, as float32 numpy: `embed_batch` at `scales`.

    The images are read with data.load_image and the test transform (bicubic resize to `input_size`
    = (height, width), ImageNet normalisation unless not `normalize`), in batches of `batchsize`
    (B, 3, H, W) on `device`, under autocast `amp_dtype`. With `compute`, the result of
    `compute(model, images)` instead (a tensor or a numpy array), e.g. demo.py's activation maps
    (N, h, w), or deploy.OnnxFeatures (then `model` is unused).
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    data = ImageFiles(paths, test_transform(*input_size, normalize=normalize))
    loader = DataLoader(data, batch_size=batchsize, num_workers=num_workers)
    outputs = []
    with torch.no_grad():
        for images in tqdm(loader, desc=desc, disable=not progress, leave=False):
            images = images.to(device)
            with autocast(device, amp_dtype):
                out = compute(model, images) if compute else embed_batch(model, images, scales)
            outputs.append(out.float().cpu().numpy() if isinstance(out, torch.Tensor) else out)
    return np.concatenate(outputs).astype(np.float32, copy=False)


class TrainedModel(NamedTuple):
    """A trained model ready to extract features (`load_for_extraction`; deploy.with_backend runs it
    with onnxruntime instead)."""

    model: object  # the network, in eval mode, on `device` (or a deploy.OnnxFeatures)
    input_size: tuple[int, int]  # (height, width)
    device: object  # torch.device
    amp_dtype: object  # the autocast dtype, or None for float32
    num_workers: int
    provenance: dict  # the provenance keys of the features it extracts at scale 1
    config: object  # model.ModelConfig
    checkpoint: Path  # the weights file
    compute: object = None  # extract's compute for its features: None for embed_batch
    normalize: bool = True  # whether extract normalises the images (False: the ONNX graph does)

    def extract(
        self, paths: list[Path], batchsize: int, progress: bool, desc: str = "", compute=None
    ) -> np.ndarray:
        """`extract` with this model: features (N, D) at scale 1, or `compute(model, images)`."""
        return extract(self.model, paths, self.input_size, self.device, self.amp_dtype, batchsize,
                       self.num_workers, progress=progress, desc=desc, compute=compute or self.compute,
                       normalize=self.normalize)  # fmt: skip


def load_for_extraction(args, logger) -> TrainedModel:
    """The trained model model/NAME of `--name` and `--which_epoch` (add_trained_model_args), on the
    device and precision of the device options (utils.add_device_args): demo.py, index.py, search.py."""
    import torch

    from model import checkpoint_path, load_trained_model
    from utils import num_workers, run_precision, select_device

    run_dir = Path("model") / args.name
    model, config = load_trained_model(run_dir, args.which_epoch)
    device = select_device(args.gpu_ids, logger)
    amp_dtype = run_precision(args, device, logger)
    model = model.to(device, memory_format=torch.channels_last)
    checkpoint = checkpoint_path(run_dir, args.which_epoch)
    origin = provenance(run_dir, args.which_epoch, checkpoint, extraction_name((1.0,), config, amp_dtype))
    return TrainedModel(
        model,
        (config.height, config.width),
        device,
        amp_dtype,
        num_workers(args, device),
        origin,
        config,
        checkpoint,
    )


# ----------------------------------------------------------------------------------------------------
# The features file.

SETS = ("query", "gallery", "mquery")  # the multi-query set is optional
PATH_KEYS = ("query_path", "gallery_path")
PROVENANCE_KEYS = ("model", "model_dir", "model_epoch", "checkpoint_sha256", "extraction")
KNOWN_KEYS = (
    {f"{s}_{field}" for s in SETS for field in ("f", "label", "cam")} | set(PATH_KEYS) | set(PROVENANCE_KEYS)
)
REDO = "run test.py to write it again"


def extraction_name(scales, config, amp_dtype, onnx_file: Path | None = None) -> str:
    """How `extract` turns images into features, in words: the `extraction` of the provenance. Two
    sets of features are comparable only when the checkpoint and this, up to the runtime, are the same
    (`same_extraction`). `scales` are side scales (test.py --ms gives their squares, area scales);
    `onnx_file`: the exported model onnxruntime ran instead of PyTorch (float32)."""
    areas = ",".join(f"{s * s:g}" for s in scales)
    runtime = f"float32, {ONNX_RUNTIME}{onnx_file}" if onnx_file else precision_name(amp_dtype)
    return f"image + flip, area scales {areas}, {config.height}x{config.width}, {runtime}"


ONNX_RUNTIME = "onnxruntime "  # what extraction_name says before the ONNX file


def same_extraction(a: str, b: str) -> bool:
    """Whether two extractions give comparable features: the same but for the runtime, since
    onnxruntime's features are PyTorch's float32 ones (export.py checks them on export)."""
    return a.split(f", {ONNX_RUNTIME}")[0] == b.split(f", {ONNX_RUNTIME}")[0]


def provenance(run_dir: Path, which_epoch: str, checkpoint: Path, extraction: str) -> dict:
    """The provenance keys of a features file written by the model `run_dir` at `which_epoch`, whose
    weights are the file `checkpoint`; `extraction` says how its features were computed."""
    return {
        "model": f"{run_dir} epoch {which_epoch}",
        "model_dir": str(Path(run_dir).resolve()),
        "model_epoch": str(which_epoch),
        "checkpoint_sha256": file_sha256(checkpoint),
        "extraction": extraction,
    }


def describe_provenance(feats: dict) -> str:
    """One line on which model wrote `feats` (a features file's contents), for the scripts' output."""
    if "checkpoint_sha256" not in feats:
        return f"written by {feats.get('model') or 'an unknown model'} (no checkpoint hash in the file)"
    return f"written by {feats['model']} (checkpoint sha256 {feats['checkpoint_sha256'][:12]}), {feats['extraction']}"


def check_same_model(feats: dict, checkpoint: Path | dict, model: str, where: str) -> str:
    """Refuse to compare features of two models: raise UserError when `feats` (the contents of the
    features file or gallery index `where`) records a checkpoint other than `checkpoint`: the weights
    file of `model` ("model/NAME epoch E"), or the provenance (a dict with `checkpoint_sha256`) of the
    features `model` wrote. Returns a warning for a file that records no checkpoint, else ""."""
    if "checkpoint_sha256" not in feats:
        return f"warning: {where} does not say which model wrote it; its features may not be comparable with {model}'s"
    sha256 = checkpoint["checkpoint_sha256"] if isinstance(checkpoint, dict) else file_sha256(checkpoint)
    if feats["checkpoint_sha256"] != sha256:
        raise UserError(
            f"{where} was written by {feats['model']}, not by {model} (another checkpoint): pass the --name "
            "and --which_epoch that wrote it, or write it again with this model"
        )
    return ""


def add_trained_model_args(parser) -> None:
    """Which trained model extracts the features: test.py and demo.py."""
    group = parser.add_argument_group("trained model")
    group.add_argument("--name", default="ft_ResNet50", help="trained model in model/NAME")
    group.add_argument("--which_epoch", default="last", help="checkpoint: an epoch number (e.g. 59) or last")


def add_result_file_arg(parser) -> None:
    """--result_file: test.py writes it, the evaluate scripts and demo.py read it."""
    parser.add_argument(
        "--result_file", default="pytorch_result.mat", help="the features file (test.py writes it)"
    )


def _vector(value, name: str, where: str, fix: str) -> np.ndarray:
    """A label or camera array as int64 of shape (n,); .mat files store vectors as (1, n)."""
    array = np.asarray(value)
    if array.ndim > 2 or (array.ndim == 2 and min(array.shape) > 1):
        raise UserError(f"{where}: {name} has shape {array.shape}, expected a vector; {fix}")
    array = array.reshape(-1)
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.all(array == np.round(array))):
        raise UserError(f"{where}: {name} must hold integers, found {array.dtype}; {fix}")
    return array.astype(np.int64)


def _paths(value, name: str, where: str, fix: str) -> list[str]:
    """Image paths as a list of str, from a list, a cell array (object array) or a char matrix."""
    if isinstance(value, (list, tuple)):
        return [str(p) for p in value]
    array = np.asarray(value)
    if array.dtype.kind == "U":  # a char matrix: MATLAB pads the rows with spaces
        return [str(p).rstrip() for p in array.reshape(-1)]
    if array.dtype == object:  # a cell array: each cell loads as a 1-element array (or an empty one)
        return [str(np.asarray(p).reshape(-1)[0]) if np.size(p) else "" for p in array.reshape(-1)]
    raise UserError(f"{where}: {name} must hold strings, found {array.dtype}; {fix}")


def _text(value) -> str:
    if isinstance(value, str):
        return value
    array = np.asarray(value).reshape(-1)
    return str(array[0]) if array.size else ""


def _check_features(feats: dict, where: str, fix: str) -> dict:
    """Return `feats` with canonical types and shapes, or raise UserError: "{where}: {problem}; {fix}"."""
    missing = [
        f"{s}_{field}" for s in SETS[:2] for field in ("f", "label", "cam") if f"{s}_{field}" not in feats
    ]
    multi = [k for k in feats if k.startswith("mquery_")]
    if multi:
        missing += [f"mquery_{field}" for field in ("f", "label", "cam") if f"mquery_{field}" not in feats]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)}; {fix}")
    out, dim = {}, None
    for s in SETS if multi else SETS[:2]:
        f = np.asarray(feats[f"{s}_f"])
        if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0 or f.dtype.kind not in "iuf":
            raise UserError(
                f"{where}: {s}_f must be a non-empty (n, d) array of numbers, "
                f"found {f.dtype} {f.shape}; {fix}"
            )
        f = np.ascontiguousarray(f, dtype=np.float32)  # .mat files load in column-major order
        if dim is not None and f.shape[1] != dim:
            raise UserError(f"{where}: {s}_f has {f.shape[1]}-d features but query_f has {dim}-d; {fix}")
        dim = f.shape[1]
        for field in ("label", "cam"):
            out[f"{s}_{field}"] = _vector(feats[f"{s}_{field}"], f"{s}_{field}", where, fix)
            if len(out[f"{s}_{field}"]) != len(f):
                raise UserError(
                    f"{where}: {s}_f has {len(f)} rows but {s}_{field} has {len(out[f'{s}_{field}'])} "
                    f"entries; {fix}"
                )
        bad = np.flatnonzero(~np.isfinite(f).all(axis=1))
        if len(bad):
            raise UserError(f"{where}: {s}_f has {len(bad)} rows with NaN or inf (row {bad[0]} first); {fix}")
        # Unit rows, or all-zero rows (the normalisation leaves an all-zero embedding at zero).
        norms = np.linalg.norm(f, axis=1)
        bad = np.flatnonzero((np.abs(norms - 1) > 1e-3) & (norms != 0))
        if len(bad):
            raise UserError(
                f"{where}: {s}_f rows must be L2-normalised, but {len(bad)} are not (row {bad[0]} has "
                f"norm {norms[bad[0]]:.4g}); {fix}"
            )
        out[f"{s}_f"] = f
    for key in PATH_KEYS:
        if key in feats:
            out[key] = _paths(feats[key], key, where, fix)
            n = len(out[f"{key.split('_')[0]}_f"])
            if len(out[key]) != n:
                raise UserError(f"{where}: {key} has {len(out[key])} paths but there are {n} features; {fix}")
    for key in PROVENANCE_KEYS:
        if key in feats:
            out[key] = _text(feats[key])
    return out


def save_features(path: str | Path, feats: dict) -> None:
    """Write the features file atomically (see the module docstring for the keys).

    `feats` holds numpy arrays (labels and cameras as (n,) integers) and, optionally, the image paths
    as lists of str and `model` as a str. The contents are checked first, so a bad array fails here,
    in test.py, rather than later in an evaluate script.
    """
    unknown = sorted(set(feats) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"save_features: unknown keys {unknown}; known keys: {sorted(KNOWN_KEYS)}")
    feats = _check_features(feats, f"cannot write {path}", "fix the features before saving them")
    mat = {}
    for key, value in feats.items():
        if key in PATH_KEYS:
            value = np.array(value, dtype=object)  # a cell array keeps each path exactly
        mat[key] = value

    def write(tmp):
        with open(tmp, "wb") as f:
            scipy.io.savemat(f, mat, do_compression=False, oned_as="row")

    atomic_write(path, write)


def load_features(path: str | Path) -> dict:
    """Read and check the features file written by `save_features` (or the classic test.py).

    Returns float32 features (n, d), int64 labels and cameras (n,), lists of str paths and the `model`
    str when present. Any problem (missing or unreadable file, missing keys, mismatched lengths, wrong
    shapes, NaN or inf, rows that are not unit-length) raises UserError with one line naming the file.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such features file; run test.py first (or pass --result_file)")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file raises OSError, ValueError...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: cannot read the features file ({reason}); {REDO}") from None
    return _check_features({k: v for k, v in mat.items() if not k.startswith("__")}, str(path), REDO)


def degenerate_rows(feats: dict, where: str) -> list[str]:
    """Check for features a broken model writes: a UserError when every query or gallery feature is
    zero or all are one same vector (nothing to rank); a warning (returned) when some rows are zero
    or one vector makes up a tenth of them or more (those images tie with each other)."""
    warnings = []
    for s, name in (("query", "query"), ("gallery", "gallery"), ("mquery", "multi-query")):
        if f"{s}_f" not in feats:
            continue
        f = feats[f"{s}_f"]
        zero = int(np.sum(~f.any(axis=1)))
        _, counts = np.unique(
            np.ascontiguousarray(f).view(np.dtype((np.void, f.shape[1] * 4))), return_counts=True
        )
        if zero == len(f) or (len(counts) == 1 and len(f) > 1):
            what = "zero" if zero == len(f) else "the same vector"
            raise UserError(
                f"{where}: every {name} feature is {what}, so there is nothing to rank (did training collapse?)"
            )
        if zero:
            warnings.append(
                f"warning: {where}: {zero} of {len(f)} {name} features are zero (no feature): they tie"
            )
        elif counts.max() >= max(2, len(f) / 10):
            warnings.append(
                f"warning: {where}: {counts.max()} of {len(f)} {name} features are one same vector: they tie"
            )
    return warnings


def multi_query_features(feats: dict) -> tuple[np.ndarray, int]:
    """Multi-query features (n_q, d): for each query, the mean of the multi-query features of the same
    person id and camera, L2-normalised (the classic evaluate_gpu.py's multi-query result).

    Returns the features and the number of queries without any multi-query image of their id and
    camera; those keep their own feature.
    """
    if "mquery_f" not in feats:
        raise UserError("the features file has no multi-query features (mquery_f); run test.py --multi")
    q_pc = np.stack([feats["query_label"], feats["query_cam"]], axis=1)
    m_pc = np.stack([feats["mquery_label"], feats["mquery_cam"]], axis=1)
    groups, inverse = np.unique(np.concatenate([m_pc, q_pc]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    m_group, q_group = inverse[: len(m_pc)], inverse[len(m_pc) :]
    sums = np.zeros((len(groups), feats["mquery_f"].shape[1]))
    np.add.at(sums, m_group, feats["mquery_f"])
    counts = np.bincount(m_group, minlength=len(groups))[q_group]
    q_f = np.where(counts[:, None] > 0, sums[q_group], feats["query_f"])
    norms = np.linalg.norm(q_f, axis=1, keepdims=True)
    q_f = q_f / np.where(norms > 0, norms, 1)
    return q_f.astype(np.float32), int(np.sum(counts == 0))

"""Index a folder of images for search.py: their features, paths and labels, and the model's identity.

Reads the images of --images (a folder and all its subfolders, an image, or a text file listing
images, one per line; any file names) and the trained model model/NAME. Writes the gallery index
--index, a folder that gallery.py describes: the features (float32 unit rows, memory-mapped when
searched), the absolute image paths, the person id and camera of each image when --naming reads them
(else -1), and which model wrote them (folder, epoch, checkpoint SHA-256, extraction).

With --add, the images that are not in the index yet are added to it as a new part; the index must
have been written by the same checkpoint with the same extraction, and keeps its naming. An index is
written whole or not at all: a run that stops early leaves the index as it was.

--search chooses how search.py searches the index (gallery.py): exact (the default; memory-mapped,
bounded memory), faiss_exact or faiss_ivf (approximate: it reads the fewest lists that reach
--target_recall; its recall@10 against the exact search is measured, printed and stored); the faiss
methods need `pip install faiss-cpu`. The index remembers its method; --add keeps it unless --search
is given, and rebuilds the faiss index.

What runs the model (`--backend`) is chosen as in test.py: on a CPU, onnxruntime on the ONNX model
of the checkpoint (exported first, and checked against PyTorch on the first images to index, when it
is absent or of an older checkpoint; `--onnx FILE` for another file), else PyTorch; the index's
extraction names the ONNX file, and its features compare with PyTorch's. Under torchrun each process
extracts its share of the new images (gloo on CPUs, NCCL on GPUs) and the first writes the index, the
same as one process writes.

    python index.py --name ft_ResNet50 --images ../my_crops --index my_index
    python index.py --name ft_ResNet50 --images ../more_crops --index my_index --add
    python index.py --name ft_ResNet50 --images ../Market/pytorch/gallery --naming ../Market/pytorch --index market
    python index.py --name ft_ResNet50 --images ../week_of_crops --index week --search faiss_ivf
    torchrun --nproc_per_node=2 index.py --name ft_ResNet50 --images ../my_crops --index my_index
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np

from data import image_labels, image_list, naming_option, naming_pattern
from deploy import (
    CHECK_QUERIES,
    add_backend_args,
    check_backend_args,
    gather_shards,
    join_processes,
    leave_processes,
    shard,
    with_backend,
    world_and_rank,
)
from features import add_trained_model_args, load_for_extraction
from gallery import (
    INDEX_FILE,
    METHODS,
    TARGET_RECALL,
    UNKNOWN,
    add_part,
    build_faiss,
    check_comparable,
    create_index,
    import_faiss,
    new_meta,
    open_index,
    write_meta,
)
from utils import (
    HelpFormatter,
    UserError,
    add_device_args,
    at_least_one,
    probability,
    run_main,
    setup_logging,
)

SHOWN = 3  # file names an error lists


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    group = parser.add_argument_group("index")
    group.add_argument(
        "--images", required=True, metavar="PATH", help="a folder (every image below it), an image, or a list"
    )
    group.add_argument("--index", default="gallery_index", help="the index folder to write or --add to")
    group.add_argument("--add", action="store_true", help="add the images not in the index yet")
    group.add_argument(
        "--naming",
        help="read person ids and cameras from the file names: market, msmt17, a regular expression with "
        "the groups pid and/or cam (see the README), or a folder prepared by prepare.py (its naming and "
        "ids); none: the images are unlabelled",
    )
    group.add_argument("--batchsize", type=at_least_one, default=64, help="images per forward pass")
    group.add_argument(
        "--search",
        choices=METHODS,
        help="how search.py searches it: exact, faiss_exact or faiss_ivf (approximate; faiss-cpu); "
        "default: exact for a new index, the index's own with --add",
    )
    group.add_argument(
        "--nprobe",
        type=at_least_one,
        help="faiss_ivf: lists read per query (more: better recall, slower); default: the fewest that "
        "reach --target_recall",
    )
    group.add_argument(
        "--target_recall",
        type=probability,
        default=TARGET_RECALL,
        help="faiss_ivf without --nprobe: the recall@10 against the exact search to reach",
    )
    add_backend_args(parser)
    add_trained_model_args(parser)
    add_device_args(parser)
    args = parser.parse_args(argv)
    check_backend_args(parser, args)
    return args


def image_labels_of(paths: list[Path], naming, ids) -> np.ndarray:
    """(n, 2) person id and camera of each image (data.image_labels); UNKNOWN without a naming."""
    labels = np.full((len(paths), 2), UNKNOWN, dtype=np.int64)
    if naming is None:
        return labels
    bad = []
    for i, path in enumerate(paths):
        try:
            labels[i] = image_labels(path, naming, ids)
        except ValueError as err:
            bad.append(str(err))
    if bad:
        raise UserError(
            f"{len(bad)} of the images do not give labels with --naming {naming.pattern!r} (first: "
            f"{'; '.join(bad[:SHOWN])}): pass another --naming, or none for unlabelled images"
        )
    return labels


def main(argv=None) -> dict | None:
    """Write or add to the index; return its index.json (None in the other processes of torchrun)."""
    args = parse_args(argv)
    world, rank = world_and_rank()
    logger = setup_logging()
    if rank:
        logger.setLevel("ERROR")
    folder = Path(args.index)
    exists = (folder / INDEX_FILE).is_file()
    if exists and not args.add:
        raise UserError(f"--index {folder} exists: pass --add to add images to it, or another --index")
    if not exists and args.add:
        raise UserError(f"--index {folder}: no index there to add to; drop --add to write a new one")
    if not exists and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"--index {folder} exists and is not a gallery index: pass another --index")
    if args.search not in (None, "exact"):
        import_faiss()  # before any work
    paths = list(dict.fromkeys(Path(os.path.abspath(p)) for p in image_list(args.images, "--images")))
    start = time.perf_counter()
    trained = load_for_extraction(args, logger)
    if exists:
        index = open_index(folder)
        check_comparable(index.meta, trained.provenance, str(folder))
        naming = None if index.meta["naming"] is None else naming_pattern(index.meta["naming"])
        ids = index.meta["ids"]
        given = naming_option(args.naming)[0]
        if given is not None and (naming is None or given.pattern != naming.pattern):
            raise UserError(
                f"--naming {args.naming}: the index {folder} reads labels with {index.meta['naming']!r}; "
                "drop --naming (an index keeps its naming)"
            )
        known = set(index.paths())
        new = [path for path in paths if str(path) not in known]
    else:
        naming, ids = naming_option(args.naming)
        new = paths
    labels = image_labels_of(new, naming, ids)  # before extracting anything: a bad name fails fast
    if not new:
        logger.info(f"nothing to add: the {len(paths)} images of {args.images} are in {folder} already")
        return None if rank else search_method(folder, index.meta, args, logger)
    join_processes(world, trained.device)
    # An export is checked on the first images to index: the first ones rank the next (or, when there
    # are only a few, each other).
    trained = with_backend(trained, args, lambda: (new[:CHECK_QUERIES], new[CHECK_QUERIES:] or new), logger)
    mine = shard(len(new), world, rank)  # this process's share, in order
    features = trained.extract([new[i] for i in mine], args.batchsize, args.progress, desc="index")
    features = gather_shards(features, world, rank)
    elapsed = time.perf_counter() - start
    leave_processes()
    if rank:
        return None
    if exists:
        meta = add_part(folder, index.meta, features, [str(p) for p in new], labels)
    else:
        pattern = None if naming is None else naming.pattern
        cameras = naming is not None and "cam" in naming.groupindex
        meta = new_meta(trained.provenance, features.shape[1], pattern, ids, cameras, args.search or "exact")
        meta = create_index(folder, meta, features, [str(p) for p in new], labels)
    total = sum(part["rows"] for part in meta["parts"])
    already = f" ({len(paths) - len(new)} were in it already)" if exists else ""
    processes = f" with {world} processes" if world > 1 else ""
    logger.info(
        f"indexed {len(new)} images{already} with {meta['model']} in {elapsed:.1f} s "
        f"({len(new) / elapsed:.1f} img/s{processes}) -> {folder}: {total} images, {meta['dim']}-d features, "
        f"{'labels from ' + repr(meta['naming']) if meta['naming'] is not None else 'unlabelled'}"
    )
    return search_method(folder, meta, args, logger)


def search_method(folder: Path, meta: dict, args, logger) -> dict:
    """Give the index its search method (--search, else its own): build its faiss index when the
    method needs one that does not hold every image yet; return the index.json written."""
    current = meta.get("search", {"method": "exact"})
    method = args.search or current["method"]
    size = sum(part["rows"] for part in meta["parts"])
    if method == "exact":
        record = {"method": method}
    elif (
        method == current["method"]
        and current.get("rows") == size
        and (
            method != "faiss_ivf"
            or (args.nprobe is None and current.get("target_recall") == args.target_recall)
            or (args.nprobe is not None and current["nprobe"] == min(args.nprobe, current["nlist"]))
        )
    ):
        return meta  # up to date
    else:
        record = build_faiss(open_index(folder), method, args.nprobe, args.target_recall)
        recall = f", recall@10 against exact {record['recall_at_10']:.4f}" if "recall_at_10" in record else ""
        lists = f" ({record['nlist']} lists, {record['nprobe']} read per query)" if "nlist" in record else ""
        logger.info(
            f"built the {method} index{lists} of {size} images in {record['build_seconds']:.1f} s{recall}"
        )
    if record != current:
        meta = {**meta, "search": record}
        write_meta(folder, meta)
    return meta


if __name__ == "__main__":
    run_main(main)

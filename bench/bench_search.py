"""Gallery index: size on disk, opening, search latency, and the time to index crops on this CPU.

1. Search (--size features, 512-d, default 100,000): random clustered unit features (make_features.py's
   generator, no images) are written as a gallery index (gallery.create_index). A child process then
   opens it (memory-mapped), searches it for the top 10 of 1 query (the median of --repeat runs, after
   one run that brings the file into the page cache) and of 100 queries at once, and checks the top 10
   against a brute-force full sort. It prints the size on disk, the time to open, the latencies and the
   child's peak memory while searching (taken before the check), which includes the index pages the
   search has read (file pages the OS can drop), and the process's own memory (RssAnon) after it.
   --methods adds the faiss methods of index.py --search: for each, a child builds its faiss index
   (gallery.build_faiss, as index.py: the build time, its peak memory and, for faiss_ivf, the lists it
   reads to reach the default target recall and the recall@10 index.py stores) and another searches it as above; faiss_exact is checked against the full sort, faiss_ivf's
   top 10 of the 100 queries is compared with it (recall@10).
2. Indexing (--crops crops, default 10,000; 0 skips it): synthetic crops (tools/synthetic.py) and an
   untrained --backbone at --height x --width (its weights do not change the speed), saved as
   model/bench; then `python index.py` indexes them in a child process, timed whole (start-up, model,
   reading and decoding the JPEGs, extraction with flip, writing the index).

    python bench/bench_search.py
    python bench/bench_search.py --size 1000000 --crops 0 --methods exact,faiss_exact,faiss_ivf
"""

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import (
    ROOT,
    conditions,
    machine,
    report,
    run_child,
    work_folder,
)  # common puts the repository on sys.path
from make_features import make_features
from utils import HelpFormatter, run_main

K = 10


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="gallery features in the index")
    parser.add_argument("--repeat", type=int, default=20, help="single-query searches timed")
    parser.add_argument(
        "--methods", default="exact", help="comma-separated search methods of index.py --search to measure"
    )
    parser.add_argument("--crops", type=int, default=10_000, help="crops to index with index.py; 0: skip")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (new or empty) and keep it")
    parser.add_argument("--child", metavar="INDEX", help=argparse.SUPPRESS)
    parser.add_argument("--write", metavar="INDEX", help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, metavar=("METHOD", "INDEX"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_index(folder: Path, size: int) -> np.ndarray:
    """A gallery index of `size` random clustered 512-d features; returns 100 queries (100, 512)."""
    import gallery

    feats = make_features(
        n_query=100, n_gallery=size, n_ids=max(1, size // 20), n_cams=6, n_junk=0, n_distractors=0
    )
    provenance = {"model": "random clusters", "model_dir": "", "model_epoch": "", "checkpoint_sha256": "0" * 64,
                  "extraction": "none"}  # fmt: skip
    labels = np.stack([feats["gallery_label"], feats["gallery_cam"]], axis=1)
    paths = [f"/gallery/{i:07d}.jpg" for i in range(size)]
    meta = gallery.new_meta(provenance, 512, "market", None, True)
    gallery.create_index(folder, meta, feats["gallery_f"], paths, labels)
    return feats["query_f"]


def build(method: str, index_dir: str) -> None:
    """Build the faiss index of `method` (as index.py --search does), record it in index.json, report."""
    import gallery

    index = gallery.open_index(index_dir)
    record = gallery.build_faiss(index, method)
    gallery.write_meta(index.folder, {**index.meta, "search": record})
    report(**record)


def child(index_dir: str, repeat: int) -> None:
    """Open the index, time the searches with its method, check them, report (common.report)."""
    import gallery

    queries = np.load(Path(index_dir).parent / "queries.npy")
    start = time.perf_counter()
    index = gallery.open_index(index_dir)
    if index.meta["search"]["method"] != "exact":
        gallery.faiss_of(index)  # faiss reads its index into memory
    open_s = time.perf_counter() - start
    gallery.search_index(index, queries[:1], K)  # the page cache holds the index from here on
    single = []
    for i in range(repeat):
        start = time.perf_counter()
        gallery.search_index(index, queries[i % len(queries)][None], K)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    found, _ = gallery.search_index(index, queries, K)
    batch_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the check's full matrix
    status = Path("/proc/self/status")
    anon = next((int(line.split()[1]) / 1024 for line in status.read_text().splitlines()
                 if line.startswith("RssAnon:")), float("nan")) if status.is_file() else float("nan")  # fmt: skip
    exact, _ = gallery.search(queries, index.parts, K)  # the exact search, checked on 5 queries below
    dist = np.concatenate([-(queries[:5] @ part.T) for part in index.parts], axis=1)  # brute force: every
    assert (exact[:5] == np.argsort(dist, axis=1, kind="stable")[:, :K]).all()  # distance of 5, sorted
    recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact)]))
    if index.meta["search"]["method"] != "faiss_ivf":
        assert (found == exact).all()
    report(open_s=open_s, single_ms=1000 * float(np.median(single)), batch_s=batch_s, size=index.size,
           search_peak_mb=peak, anon_mb=anon, recall=recall)  # fmt: skip


def index_crops(work: Path, args) -> dict:
    """Synthetic crops and an untrained model; time `python index.py` on the crops."""
    import torch

    import synthetic
    from model import ModelConfig, build_model
    from utils import save_yaml

    start = time.perf_counter()
    num_ids = max(4, args.crops // 11 + 10)  # about 11.5 images per synthetic identity
    synthetic.generate(work / "raw", num_ids=num_ids, seed=0)
    crops = sorted((work / "raw").glob("*/*.jpg"))[: args.crops]
    if len(crops) < args.crops:
        raise SystemExit(f"only {len(crops)} synthetic crops for --crops {args.crops}")
    (work / "crops.txt").write_text("".join(f"{p}\n" for p in crops))
    print(f"{time.perf_counter() - start:7.1f} s  {len(crops)} synthetic crops", flush=True)
    config = ModelConfig(nclasses=100, backbone=args.backbone, height=args.height, width=args.width)
    save_yaml(work / "model/bench/opts.yaml", {"model": config.to_dict()})
    torch.save(build_model(config).state_dict(), work / "model/bench/net_last.pth")
    argv = [str(ROOT / "index.py"), "--name", "bench", "--images", "crops.txt", "--index", "crops_index",
            "--gpu_ids", "-1", "--no-progress"]  # fmt: skip
    print(f"$ python index.py {' '.join(argv[1:])}", flush=True)
    start = time.perf_counter()
    run = subprocess.run([sys.executable, *argv], cwd=work, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"index.py failed:\n{run.stderr[-3000:]}")
    print(run.stdout.strip().splitlines()[-1])
    size = sum(f.stat().st_size for f in (work / "crops_index").iterdir())
    return {"crops": len(crops), "wall_s": wall, "size_mb": size / 2**20}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.write:  # a child, so that the parent stays small: a child's peak memory counts its parent's
        start = time.perf_counter()
        np.save(Path(args.write).parent / "queries.npy", write_index(Path(args.write), args.size))
        return report(write_s=time.perf_counter() - start)
    if args.child:
        return child(args.child, args.repeat)
    if args.build:
        return build(*args.build)
    print(f"$ python bench/bench_search.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(
        f"machine: {conditions()}"
    )  # no torch before the search child: it would slow it and add to its peak
    with work_folder(args.keep, "bench_search-") as work:
        written = run_child(
            [str(Path(__file__).resolve()), "--write", str(work / "index"), "--size", str(args.size)]
        )
        size = sum(f.stat().st_size for f in (work / "index").iterdir())
        print(f"{written['write_s']:7.1f} s  wrote an index of {args.size:,} random 512-d features")
        for method in args.methods.split(","):
            if method != "exact":
                built = run_child([str(Path(__file__).resolve()), "--build", method, str(work / "index")])
                lists = (
                    f", {built['nlist']} lists, {built['nprobe']} read per query (target recall@10 "
                    f"{built['target_recall']:g})"
                    if "nlist" in built
                    else ""
                )
                recall = (
                    f"; recall@10 against exact (index.py's): {built['recall_at_10']:.4f}"
                    if "nlist" in built
                    else ""
                )
                faiss_mb = (work / "index" / "faiss.index").stat().st_size / 2**20
                print(
                    f"{method}{lists}: built in {built['build_seconds']:.1f} s (peak memory {built['peak_mb']:.0f} MB), "
                    f"faiss.index {faiss_mb:.1f} MB{recall}"
                )
            result = run_child(
                [str(Path(__file__).resolve()), "--child", str(work / "index"), "--repeat", str(args.repeat)]
            )
            where = "opened (memory-mapped)" if method == "exact" else "opened (faiss.index read into memory)"
            check = (
                "exact: equal to a full sort"
                if method != "faiss_ivf"
                else f"recall@10 of the 100 queries: {result['recall']:.4f}"
            )
            print(
                f"{method}: index of {result['size']:,} features, 512-d: {size / 2**20:.1f} MB on disk; {where} in "
                f"{1000 * result['open_s']:.1f} ms; top {K} of 1 query: {result['single_ms']:.1f} ms (median of "
                f"{args.repeat}); top {K} of 100 queries at once: {result['batch_s']:.2f} s "
                f"({1000 * result['batch_s'] / 100:.1f} ms per query, {100 / result['batch_s']:.0f} queries/s); peak memory "
                f"while searching {result['search_peak_mb']:.0f} MB resident (the index pages read included: file cache "
                f"the OS can drop), {result['anon_mb']:.0f} MB of the process's own (RssAnon, after the searches); {check}"
            )
        if args.crops:
            crops = index_crops(work, args)
            print(
                f"indexing {crops['crops']:,} crops ({args.backbone} {args.height}x{args.width}, image + flip, float32): "
                f"{crops['wall_s']:.1f} s whole process ({crops['crops'] / crops['wall_s']:.1f} crops/s); "
                f"index {crops['size_mb']:.1f} MB"
            )
            print(f"machine: {machine()}")


if __name__ == "__main__":
    run_main(main)

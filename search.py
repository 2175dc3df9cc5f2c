"""Search a gallery index with images: each one's nearest gallery images, match or no match, as JSON,
CSV, a contact sheet and an HTML page.

Reads the gallery index --index (index.py), the trained model that wrote it (--name, --which_epoch:
the same checkpoint, or it stops) and the query images of --query (an image, a folder and all its
subfolders, or a text file listing images). Each query's --top_k nearest gallery images come from the
index's search method (index.py --search): by default an exact search of the whole index. A query file that is in the index itself is left out
of its own results. The answer is "match" when the best distance is within the threshold (--threshold,
else the one calibrate.py stored in the index) and "no match" above it; without a threshold there is
no answer. When the index has labels and a query's name gives them with the index's naming, the
results are framed by the Market-1501 rule: match (the same person from another camera), wrong, junk.

Writes the folder --output, replaced as a whole on the next run:
    results.json   the index, its search method, model, threshold, and per query: its answer, best distance, id and
                   camera when known, and its results (rank, gallery path, distance, id, camera, kind)
    results.csv    one row per query and rank: query, query_id, query_cam, answer, rank, gallery,
                   distance, gallery_id, gallery_cam, kind (empty when unknown)
    results.png    a contact sheet of the first CONTACT_SHEET_QUERIES queries and their results
    index.html     the page: every query, its answer and results as thumbnails framed by kind, linked
                   to the images (relative links; it opens from the file system, no server)
    thumbs/        the page's thumbnails

Distances are Euclidean distances of unit features, sqrt(2 - 2 cos), from 0 to 2, written in full.

    python search.py --index my_index --query photos/ --name ft_ResNet50 --output my_search
"""

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np

from data import image_labels, image_list, load_image, naming_pattern
from features import add_trained_model_args, load_for_extraction
from gallery import add_answer_args, check_comparable, is_match, open_index, search_index
from pages import Thumbnails, contact_sheet, match_kinds, search_page, write_folder
from utils import HelpFormatter, UserError, add_device_args, run_main, setup_logging

CONTACT_SHEET_QUERIES = 20  # rows of results.png; the page and the files hold every query
BATCH_SIZE = 64  # query images per forward pass
CSV_COLUMNS = ["query", "query_id", "query_cam", "answer", "rank", "gallery", "distance", "gallery_id",
               "gallery_cam", "kind"]  # fmt: skip
GALLERY_SIZE_NOTE = 2  # note when the index is this many times larger than the calibration gallery


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    group = parser.add_argument_group("search")
    group.add_argument("--index", default="gallery_index", help="the gallery index (index.py)")
    group.add_argument(
        "--query", required=True, metavar="PATH", help="an image, a folder (every image below it), or a list"
    )
    add_answer_args(group, "without it, the threshold calibrate.py stored in the index, if any")
    group.add_argument("--output", default="search_results", help="the folder to write the results to")
    add_trained_model_args(parser)
    add_device_args(parser)
    return parser.parse_args(argv)


def threshold_of(args, index, logger) -> tuple[float | None, str | None]:
    """The threshold and where it comes from: --threshold, the index's calibrated one, or none."""
    if args.threshold is not None:
        return args.threshold, "--threshold"
    stored = index.meta.get("threshold")
    if stored is None:
        logger.info(
            f"note: {index.folder} has no calibrated threshold and --threshold is not given: no answers"
        )
        return None, None
    if index.size > GALLERY_SIZE_NOTE * stored["gallery_size"]:
        logger.info(
            f"note: the threshold was calibrated on a gallery of {stored['gallery_size']} images, the index "
            f"has {index.size}: absent people meet more look-alikes here, so expect more false matches "
            f"than {stored['target_false_match_rate']:.1%}"
        )
    origin = (
        f"calibrate.py: false-match rate {stored['target_false_match_rate']:.1%} on "
        f"{os.path.basename(stored['result_file'])}"
    )
    return stored["threshold"], origin


def query_labels(paths: list[Path], index) -> list[tuple[int | None, int | None]]:
    """The (id, camera) of each query from its name with the index's naming; None when unknown."""
    if index.meta["naming"] is None:
        return [(None, None)] * len(paths)
    naming = naming_pattern(index.meta["naming"])
    labels = []
    for path in paths:
        try:
            labels.append(image_labels(path, naming, index.meta["ids"]))
        except ValueError:
            labels.append((None, None))
    return labels


def shown(value, known: bool):
    """A label as the outputs show it: None when the index's naming does not read it (no naming, or
    the cameras of a camera-less naming, which are a device of the protocol: data.own_camera)."""
    return int(value) if known else None


def results_of(args, index, paths, q_f, threshold, origin) -> dict:
    """Search and gather what results.json holds."""
    gallery_paths = index.paths()
    position = {path: i for i, path in enumerate(gallery_paths)}
    exclude = np.array([position.get(str(path), -1) for path in paths])
    top_k = min(args.top_k, index.size - bool((exclude >= 0).any()))
    if top_k < 1:
        raise UserError(f"--index {index.folder} holds only the query's own image: nothing to search")
    found, dists = search_index(index, q_f, top_k, exclude)
    cameras = index.meta["cameras"]
    labelled = index.meta["naming"] is not None
    queries = []
    for path, (q_pid, q_cam), own, order, dist in zip(
        paths, query_labels(paths, index), exclude, found, dists
    ):
        g_pid, g_cam = index.labels[order, 0], index.labels[order, 1]
        kinds = match_kinds(q_pid, q_cam, g_pid, g_cam) if q_pid is not None else [None] * len(order)
        answer = None if threshold is None else ("match" if is_match(dist[0], threshold) else "no match")
        hits = [
            {"rank": rank, "gallery": gallery_paths[j], "gallery_index": int(j), "distance": float(d),
             "id": shown(pid, labelled), "cam": shown(cam, labelled and cameras),
             "kind": None if kind is None else str(kind)}
            for rank, (j, d, pid, cam, kind) in enumerate(zip(order, dist, g_pid, g_cam, kinds), start=1)
        ]  # fmt: skip
        queries.append(
            {"query": str(path), "id": q_pid, "cam": q_cam if cameras else None, "answer": answer,
             "best_distance": float(dist[0]), "left_out_itself": bool(own >= 0), "results": hits}
        )  # fmt: skip
    return {
        "index": str(index.folder),
        "index_size": index.size,
        "search": index.meta.get("search", {"method": "exact"}),
        "model": index.meta["model"],
        "checkpoint_sha256": index.meta["checkpoint_sha256"],
        "extraction": index.meta["extraction"],
        "distance": "Euclidean distance of unit features, sqrt(2 - 2 cos), from 0 to 2",
        "threshold": threshold,
        "threshold_from": origin,
        "top_k": top_k,
        "queries": queries,
    }


def csv_rows(results: dict) -> list[list]:
    """results.csv's rows: one per query and rank, CSV_COLUMNS, "" for what is unknown."""
    rows = []
    for q in results["queries"]:
        for hit in q["results"]:
            values = [q["query"], q["id"], q["cam"], q["answer"], hit["rank"], hit["gallery"], repr(hit["distance"]),
                      hit["id"], hit["cam"], hit["kind"]]  # fmt: skip
            rows.append(["" if value is None else value for value in values])
    return rows


def sheet(results: dict):
    """The contact sheet of the first CONTACT_SHEET_QUERIES queries."""
    rows = []
    for q in results["queries"][:CONTACT_SHEET_QUERIES]:
        answer = "" if q["answer"] is None else f"{q['answer']}: best distance {q['best_distance']:.3f}"
        rows.append({
            "query_image": load_image(q["query"]),
            "query_text": os.path.basename(q["query"]),
            "images": [load_image(hit["gallery"]) for hit in q["results"]],
            "dists": [hit["distance"] for hit in q["results"]],
            "kinds": [hit["kind"] or "unknown" for hit in q["results"]],
            "texts": [" ".join(f"{k} {hit[k]}" for k in ("id", "cam") if hit[k] is not None) for hit in q["results"]],
            "answer": answer,
        })  # fmt: skip
    n = len(results["queries"])
    title = f"{min(n, CONTACT_SHEET_QUERIES)} of {n} queries against {results['index']} ({results['index_size']} images)"
    return contact_sheet(rows, title)


def write_results(output: str, results: dict) -> Path:
    """Write the --output folder (module docstring); returns its absolute path."""

    def build(tmp: Path) -> None:
        with open(tmp / "results.json", "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
        with open(tmp / "results.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(csv_rows(results))
        sheet(results).savefig(tmp / "results.png", format="png")
        page = search_page(results, Thumbnails(tmp), out)
        (tmp / "index.html").write_text(page, encoding="utf-8")

    out = Path(output).absolute()
    return write_folder(out, "search.py", "--output", build)


def main(argv=None) -> dict:
    """Search; return what results.json holds."""
    args = parse_args(argv)
    logger = setup_logging()
    index = open_index(args.index)
    paths = list(dict.fromkeys(Path(os.path.abspath(p)) for p in image_list(args.query, "--query")))
    threshold, origin = threshold_of(args, index, logger)
    trained = load_for_extraction(args, logger)
    check_comparable(index.meta, trained.provenance, str(index.folder))
    q_f = trained.extract(paths, BATCH_SIZE, args.progress, desc="queries")
    results = results_of(args, index, paths, q_f, threshold, origin)
    out = write_results(args.output, results)
    for q in results["queries"]:
        best = q["results"][0]
        answer = f"{q['answer']}, " if q["answer"] else ""
        logger.info(f"{q['query']}: {answer}best distance {best['distance']:.3f} ({best['gallery']})")
    answered = [q["answer"] for q in results["queries"] if q["answer"]]
    if answered:
        logger.info(
            f"{answered.count('match')} of {len(answered)} queries answered 'match' (threshold {threshold:.4f})"
        )
    logger.info(f"wrote {out}/index.html, results.json, results.csv, results.png")
    return results


if __name__ == "__main__":
    run_main(main)

"""Pictures and pages of rankings: framed rows of images, contact sheets, static HTML pages.

- Frames: what each ranked gallery image is for its query, by the Market-1501 rule of
  metrics.protocol_masks (`match_kinds`): green = the same person from another camera (a true match),
  red = another person, grey = junk (the same person from the same camera, or label -1: ignored);
  blue when the query's identity is unknown. The same colours in figures and pages.
- Figures (matplotlib.figure.Figure, no pyplot): `draw_ranking` puts one query and its ranked images
  in a row of a figure (demo.py's ranking figure, search.py's contact sheet); `calibration_figure`
  and `cmc_figure` plot a threshold calibration and a CMC curve.
- Pages: `write_folder` writes a folder of results (a page, its thumbnails and figures) whole or not
  at all; `Thumbnails` makes the small images a page shows; `search_page` and `evaluation_page` write
  the HTML of search.py and of the evaluate scripts' `--html`. Pages are static HTML (the standard
  library's html.escape), with relative links to the thumbnails (in the folder) and to the original
  images, so they open from the file system in any browser, no server.
"""

import hashlib
import html
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
from matplotlib.figure import Figure

from data import load_image
from features import describe_provenance
from gallery import calibrate, features_best_distances, rates_at
from metrics import euclidean, protocol_masks
from utils import UserError, atomic_write, check_replaceable, replace_folder

FRAME_COLOURS = {"match": "#00a000", "wrong": "#e00000", "junk": "#909090", "unknown": "#3070c0"}
DISTANCE_NAME = "distance |q - g| of unit features = sqrt(2 - 2 cos)"
FRAME_LEGEND = "green = same person (another camera), red = different person, grey = junk (ignored)"
UNKNOWN_LEGEND = "blue = gallery image (the query's identity is unknown)"
DPI = 100
THUMB_HEIGHT = 128  # pixels; images wider than tall are squeezed to THUMB_HEIGHT wide
MARKER = "ABOUT.txt"  # the first line of this file marks a results folder as ours (see write_folder)

# ----------------------------------------------------------------------------------------------------
# Frames and figures.


def match_kinds(q_pid: int, q_cam: int, g_pid: np.ndarray, g_cam: np.ndarray) -> np.ndarray:
    """What each gallery image (n,) is for one query, by metrics.protocol_masks (Market-1501):
    "junk" (ignored by the metric), "match" (a true match) or "wrong" (distractors included)."""
    good, junk = protocol_masks([q_pid], [q_cam], np.asarray(g_pid), np.asarray(g_cam))
    return np.where(junk[0], "junk", np.where(good[0], "match", "wrong"))


def short(text: str, length: int = 18) -> str:
    """A long file name cut to its ends."""
    return text if len(text) <= length else f"{text[: length // 2 - 1]}…{text[-(length // 2) :]}"


def draw_ranking(fig: Figure, grid, row: int, query_image, query_text: str, images, dists, kinds, texts):
    """Draw one query and its ranked images in row `row` of `grid` (a GridSpec of 2 + k columns: the
    query, a gap, the ranked images), each ranked image framed by its kind (FRAME_COLOURS) with its
    rank above and its distance and a line of text (e.g. id and camera) below."""

    def tile(column, image, frame_colour, head, foot, head_colour="black"):
        ax = fig.add_subplot(grid[row, column])
        ax.imshow(np.asarray(image))
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(frame_colour)
            spine.set_linewidth(4)
        ax.set_title(head, fontsize=10, color=head_colour, weight="bold")
        ax.set_xlabel(foot, fontsize=9)

    tile(0, query_image, "black", "query", short(query_text))
    for rank, (image, dist, kind, text) in enumerate(zip(images, dists, kinds, texts), start=1):
        head = f"{rank}" if kind == "unknown" else f"{rank} {kind}"
        tile(rank + 1, image, FRAME_COLOURS[kind], head, f"{dist:.3f}\n{text}", FRAME_COLOURS[kind])


def contact_sheet(rows: list[dict], title: str, tile=(1.3, 3.2)) -> Figure:
    """One figure, one row per query: rows are dicts with the arguments of draw_ranking (query_image,
    query_text, images, dists, kinds, texts) and `answer`, written above the row's images."""
    top_k = max(len(row["images"]) for row in rows)
    width, height = max(9.0, tile[0] * (top_k + 1.3)), 0.9 + tile[1] * len(rows)
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.text(0.1 / width, 1 - 0.1 / height, title, fontsize=11, weight="bold", va="top")
    grid = fig.add_gridspec(
        len(rows), top_k + 2, width_ratios=[1, 0.3] + [1] * top_k, left=0.3 / width, right=1 - 0.1 / width,
        top=1 - 0.9 / height, bottom=0.05 / height, hspace=0.6,
    )  # fmt: skip
    for i, row in enumerate(rows):
        draw_ranking(fig, grid, i, row["query_image"], row["query_text"], row["images"], row["dists"],
                     row["kinds"], row["texts"])  # fmt: skip
        if row["answer"]:
            colour = (
                FRAME_COLOURS["wrong"] if row["answer"].startswith("no match") else FRAME_COLOURS["match"]
            )
            box = fig.axes[-1].get_position()
            fig.text(
                0.1 / width, box.y1 + 0.3 / height, row["answer"], fontsize=9, color=colour, weight="bold"
            )
    return fig


def calibration_figure(best: dict, calibration: dict, title: str) -> Figure:
    """Left: densities of the best true-match and impostor distances (gallery.best_distances), the
    threshold drawn. Right: true-match rate against false-match rate (log) over every threshold."""
    fig = Figure(figsize=(11, 4.5), dpi=DPI)
    hist, roc = fig.subplots(1, 2, width_ratios=[1.3, 1])
    true, impostor = best["true"][np.isfinite(best["true"])], best["impostor"][np.isfinite(best["impostor"])]
    for values, colour, label in (
        (true, FRAME_COLOURS["match"], f"nearest true match ({len(true)} queries)"),
        (impostor, FRAME_COLOURS["wrong"], f"nearest other person ({len(impostor)} queries)"),
    ):
        hist.hist(values, bins=np.linspace(0, 2, 101), density=True, alpha=0.45, color=colour, label=label)
    threshold, rate = calibration["threshold"], calibration["target_false_match_rate"]
    hist.axvline(
        threshold,
        color="black",
        linestyle="--",
        label=f"threshold {threshold:.3f} ({rate:.1%} false matches)",
    )
    both = np.concatenate([true, impostor])
    hist.set_xlim(max(0.0, both.min() - 0.1), min(2.0, both.max() + 0.1))
    hist.set_xlabel(f"best {DISTANCE_NAME}")
    hist.set_ylabel("density")
    hist.set_title(title, fontsize=10)
    hist.legend(fontsize=8)
    curve = rates_at(best, np.unique(both))
    lowest = 0.5 / max(1, len(impostor))  # a rate of 0 is drawn here, at the left edge of the log axis
    roc.plot(np.maximum(curve["false_match"], lowest), curve["true_match"], color="black")
    roc.plot(max(calibration["false_match_rate"], lowest), calibration["true_match_rate"], "o", color="black")
    roc.set_xscale("log")
    roc.set_xlim(lowest, 1)
    roc.set_ylim(0, 1.02)
    roc.set_xlabel("false-match rate: absent people answered 'match' (0: left edge)")
    roc.set_ylabel("true-match rate (a true match first, within)")
    roc.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def calibration_report(feats: dict, where: str, rate: float, figure_path: str | Path) -> tuple[dict, dict]:
    """Calibrate the threshold on the features of `where` (a features file's contents) for a target
    false-match rate, and write the figure: returns gallery.best_distances and gallery.calibrate's
    results. calibrate.py and demo.py --plot_distances."""
    best = features_best_distances(feats)
    if not np.isfinite(best["true"]).any():
        raise UserError(f"{where}: no query has a true match in the gallery; a threshold needs some")
    try:
        calibration = calibrate(best, rate)
    except ValueError as err:
        raise UserError(f"{where}: {err}") from None
    fig = calibration_figure(
        best, calibration, f"best distances of the {len(best['true'])} queries of {where}"
    )
    atomic_write(figure_path, lambda tmp: fig.savefig(tmp, format="png"))
    return best, calibration


def cmc_figure(cmc: list[float], title: str) -> Figure:
    """The CMC curve: Rank@k for k = 1..len(cmc)."""
    fig = Figure(figsize=(6, 3.6), dpi=DPI)
    ax = fig.add_subplot()
    ranks = np.arange(1, len(cmc) + 1)
    ax.plot(ranks, cmc, marker="o", markersize=3, color=FRAME_COLOURS["match"])
    ax.set_xlabel("rank k")
    ax.set_ylabel("Rank@k (share of queries with a true match in the top k)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(1, len(cmc))
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------
# Folders of results and their pages.


def write_folder(out: str | Path, writer: str, option: str, build) -> Path:
    """Write the results folder `out` with `build(tmp)`, whole or not at all (utils.replace_folder):
    `out` must be absent, empty, or a folder `writer` wrote before (its ABOUT.txt), which is replaced.
    `build` gets the temporary folder; links must be made relative to `out` (returned, absolute)."""
    out = Path(out).absolute()
    first_line = f"# results written by {writer}"
    check_replaceable(out, MARKER, first_line, writer, option)

    def build_all(tmp: Path) -> None:
        (tmp / MARKER).write_text(f"{first_line}\nindex.html is the page; open it in a browser.\n")
        build(tmp)

    replace_folder(out, build_all)
    return out


class Thumbnails:
    """The thumbnails of a page: `src(path)` writes the thumbnail of image `path` once into
    `build_dir/thumbs/` and returns its link from the page."""

    def __init__(self, build_dir: Path):
        self.folder = build_dir / "thumbs"
        self.done: dict[str, str] = {}

    def src(self, path: str | Path) -> str:
        key = os.path.abspath(path)
        if key not in self.done:
            image = load_image(path)
            width = min(THUMB_HEIGHT, max(1, round(image.width * THUMB_HEIGHT / image.height)))
            name = f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.jpg"
            self.folder.mkdir(exist_ok=True)
            image.resize((width, THUMB_HEIGHT)).save(self.folder / name, quality=85)
            self.done[key] = f"thumbs/{name}"
        return self.done[key]


def href(path: str | Path, page_dir: Path) -> str:
    """A link from a page in `page_dir` to the file `path`: relative, URL-quoted."""
    return quote(Path(os.path.relpath(os.path.abspath(path), page_dir)).as_posix())


PAGE_STYLE = """
body { font-family: sans-serif; margin: 1.2em; color: #222; }
table.metrics td, table.metrics th { padding: 2px 10px; text-align: right; }
.row { display: flex; gap: 6px; align-items: flex-start; padding: 8px 0; border-bottom: 1px solid #ddd; }
figure { margin: 0; text-align: center; font-size: 12px; max-width: 140px; }
figure img { display: block; margin: auto; height: 128px; border: 4px solid; }
figure.query img { border-color: black; }
figure.beyond { opacity: 0.45; }
.gap { width: 18px; }
.answer { font-weight: bold; }
"""


def page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            f'<head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head>',
            "<body>",
            f"<h1>{html.escape(title)}</h1>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def image_cell(path: str | None, caption: list[str], thumbs: Thumbnails, page_dir: Path, css: str = "",
               colour: str | None = None) -> str:  # fmt: skip
    """A figure: the thumbnail of `path` linked to the image, framed in `colour`, and caption lines."""
    style = f' style="border-color: {colour}"' if colour else ""
    if path is None:
        picture = ""
    else:
        alt = html.escape(os.path.basename(path), quote=True)
        picture = f'<a href="{href(path, page_dir)}"><img src="{thumbs.src(path)}" alt="{alt}"{style}></a>'
    text = "<br>".join(caption)
    return f'<figure class="{css}">{picture}<figcaption>{text}</figcaption></figure>'


def labels_text(pid, cam) -> str:
    """ "id 3 cam 2", "id 3", or "" for what is known."""
    parts = ([f"id {pid}"] if pid is not None else []) + ([f"cam {cam}"] if cam is not None else [])
    return html.escape(" ".join(parts))


def search_page(results: dict, thumbs: Thumbnails, page_dir: Path) -> str:
    """The HTML of search.py's results (the dict it writes as results.json): per query, its thumbnail
    and answer, then its ranked images framed by kind; images beyond the threshold are faded."""
    threshold = results["threshold"]
    if threshold is None:
        rule = "No threshold: pass --threshold or calibrate the index with calibrate.py."
    else:
        rule = (
            f"Threshold {threshold:.4f} ({html.escape(results['threshold_from'])}): a query is answered "
            "'match' when its best distance is within it; images beyond it are faded."
        )
    index = (
        f"<p>Index <code>{html.escape(results['index'])}</code> ({results['index_size']:,} images), "
        f"{html.escape(results['model'])}; {len(results['queries'])} queries, top {results['top_k']}.</p>"
    )
    about = [
        index,
        f"<p>Numbers: {html.escape(DISTANCE_NAME)}, smaller = more similar. {rule}</p>",
        f"<p>Frames: {FRAME_LEGEND}; {UNKNOWN_LEGEND}.</p>",
    ]
    rows = []
    for query in results["queries"]:
        answer = query["answer"]
        caption = [html.escape(short(os.path.basename(query["query"]), 24))]
        if labels_text(query["id"], query["cam"]):
            caption.append(labels_text(query["id"], query["cam"]))
        if answer is not None:
            colour = FRAME_COLOURS["match" if answer == "match" else "wrong"]
            caption.append(f'<span class="answer" style="color: {colour}">{answer}</span>')
        cells = [image_cell(query["query"], caption, thumbs, page_dir, "query"), '<div class="gap"></div>']
        for hit in query["results"]:
            beyond = threshold is not None and hit["distance"] > threshold
            caption = [f"{hit['rank']}: {hit['distance']:.3f}"]
            if labels_text(hit["id"], hit["cam"]):
                caption.append(labels_text(hit["id"], hit["cam"]))
            kind = hit["kind"] or "unknown"
            cells.append(image_cell(hit["gallery"], caption, thumbs, page_dir, "beyond" if beyond else "",
                                    FRAME_COLOURS[kind]))  # fmt: skip
        rows.append(f'<div class="row">{"".join(cells)}</div>')
    return page(f"Search of {results['index']}", about + rows)


def evaluation_page(about: list[str], sections: list[dict], thumbs: Thumbnails, page_dir: Path) -> str:
    """The HTML of an evaluate script's --html report. `about`: lines on the file and the model.
    sections: one per query set, dicts with `results` (metrics.evaluate's dict), `cmc_png` (the CMC
    figure's file name) and `worst`: the worst queries, dicts with `path`, `id`, `cam`, `ap`,
    `ap_market`, `first_rank` and `hits` (dicts with `path`, `id`, `cam`, `distance`, `kind`)."""
    body = [f"<p>{html.escape(line)}</p>" for line in about]
    for section in sections:
        r = section["results"]
        body.append(
            f"<h2>{html.escape(r['protocol'])}: {r['n_query']:,} queries x {r['n_gallery']:,} gallery</h2>"
        )
        body.append('<table class="metrics"><tr><th>Rank@1</th><th>Rank@5</th><th>Rank@10</th>'
                    "<th>mAP (Market-1501 rule)</th><th>mAP (non-interpolated)</th><th>mINP</th>"
                    "<th>queries evaluated</th><th>skipped (no true match)</th></tr>")  # fmt: skip
        numbers = [r["rank1"], r["rank5"], r["rank10"], r["mAP_market1501"], r["mAP"], r["mINP"]]
        cells = (
            "".join(f"<td>{x:.4f}</td>" for x in numbers)
            + f"<td>{r['n_evaluated']}</td><td>{r['n_skipped']}</td>"
        )
        body.append(f"<tr>{cells}</tr></table>")
        body.append(f'<p><img src="{section["cmc_png"]}" alt="CMC curve"></p>')
        body.append(
            f"<h3>The {len(section['worst'])} queries with the lowest AP (non-interpolated), and their "
            f"top {len(section['worst'][0]['hits']) if section['worst'] else 0}</h3>"
            f"<p>Frames: {FRAME_LEGEND}. Numbers: {html.escape(DISTANCE_NAME)}.</p>"
        )
        for query in section["worst"]:
            caption = [labels_text(query["id"], query["cam"]),
                       f"AP {query['ap']:.3f} (Market {query['ap_market']:.3f})",
                       f"first true match: rank {query['first_rank']}"]  # fmt: skip
            cells = [image_cell(query["path"], caption, thumbs, page_dir, "query"), '<div class="gap"></div>']
            for rank, hit in enumerate(query["hits"], start=1):
                caption = [f"{rank}: {hit['distance']:.3f}", labels_text(hit["id"], hit["cam"])]
                cells.append(
                    image_cell(hit["path"], caption, thumbs, page_dir, "", FRAME_COLOURS[hit["kind"]])
                )
            body.append(f'<div class="row">{"".join(cells)}</div>')
    return page("Evaluation report", body)


WORST_QUERIES = 20  # queries of lowest AP shown by the evaluation report


def worst_queries(feats: dict, q_f: np.ndarray, per_query: dict) -> list[dict]:
    """The WORST_QUERIES evaluated queries of lowest AP (non-interpolated; ties: query order), each
    with its nearest gallery images (metrics.evaluate's per-query `top`), as evaluation_page wants."""
    evaluated = np.flatnonzero(per_query["n_good"] > 0)
    worst = evaluated[np.argsort(per_query["ap"][evaluated], kind="stable")][:WORST_QUERIES]
    g_pid, g_cam, g_f = feats["gallery_label"], feats["gallery_cam"], feats["gallery_f"]

    def image(split, i):  # a picture only when the features file names an image that is there
        paths = feats.get(f"{split}_path")
        return paths[i] if paths is not None and Path(paths[i]).is_file() else None

    out = []
    for i in worst:
        top = per_query["top"][i]
        q_pid, q_cam = int(feats["query_label"][i]), int(feats["query_cam"][i])
        dists = euclidean(-(g_f[top] @ q_f[i]))
        hits = [{"path": image("gallery", j), "id": int(g_pid[j]), "cam": int(g_cam[j]), "distance": float(d),
                 "kind": str(kind)} for j, d, kind in zip(top, dists, match_kinds(q_pid, q_cam, g_pid[top], g_cam[top]))]  # fmt: skip
        out.append({"path": image("query", i), "id": q_pid, "cam": q_cam, "ap": float(per_query["ap"][i]),
                    "ap_market": float(per_query["ap_market"][i]), "first_rank": int(per_query["first_rank"][i]),
                    "hits": hits})  # fmt: skip
    return out


def evaluation_report(
    out: str | Path, feats: dict, where: str, runs: list[tuple[dict, np.ndarray, dict]]
) -> Path:
    """Write the evaluate scripts' --html folder: index.html (evaluation_page), a CMC figure per query
    set, thumbnails. runs: (results with per-query numbers popped, q_f (n_q, d), per_query) per query
    set. Returns the folder, absolute."""
    out = Path(out).absolute()

    def build(tmp: Path) -> None:
        sections = []
        for results, q_f, per_query in runs:
            png = f"cmc-{results['protocol']}.png"
            fig = cmc_figure(results["cmc"], f"CMC, {results['protocol']}, {where}")
            fig.savefig(tmp / png, format="png")
            sections.append(
                {"results": results, "cmc_png": png, "worst": worst_queries(feats, q_f, per_query)}
            )
        about = [f"{where}: {describe_provenance(feats)}", f"Ranked by {runs[0][0]['distance']}."]
        (tmp / "index.html").write_text(
            evaluation_page(about, sections, Thumbnails(tmp), out), encoding="utf-8"
        )

    return write_folder(out, "an evaluate script", "--html", build)

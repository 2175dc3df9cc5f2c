"""index.py, calibrate.py, search.py and the evaluate scripts' --html: on the tiny trained model.

The index round trip (write, add, reload memory-mapped, the same results), search's JSON and CSV on a
tiny index whose answer is known, "no match" for noise images with the calibrated threshold, every
link of the HTML pages resolving and the pages parsing, and the one-line refusals."""

import csv
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

import calibrate
import evaluate
import gallery
import index as index_script
import search
import test as test_script
from utils import UserError, run_main

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--gpu_ids", "-1", "--no-progress"]
MODEL = ["--name", "tiny", *CPU]


@pytest.fixture
def work(tiny_trained, tmp_path, monkeypatch):
    """The current folder holds model/tiny (a link to the session's trained model)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny").symlink_to(tiny_trained / "model" / "tiny")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def noise_images(folder: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(folder / f"noise{i}.png")
    return folder


class Links(HTMLParser):
    """Every src and href of a page; raises on markup html.parser cannot follow."""

    def __init__(self):
        super().__init__()
        self.links, self.open = [], []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href")]
        if tag not in ("img", "meta", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing"


def check_page(page: Path) -> list[str]:
    """Parse the page; every link must resolve to a file, relative to the page. Returns the links."""
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    assert parser.open == [], f"unclosed {parser.open}"
    assert parser.links
    for link in parser.links:
        assert not link.startswith(("/", "file:", "http")), (
            link
        )  # relative: the folder can move with the images
        assert (page.parent / unquote(link)).is_file(), link
    return parser.links


# ----------------------------------------------------------------------------------------------------
# index.py


def test_index_add_and_reload_memory_mapped_give_the_same_results(work, tiny_prepared, capsys):
    gallery_dir = tiny_prepared / "gallery"
    first = sorted(gallery_dir.glob("000[12]/*.jpg"))
    listing = work / "first.txt"
    listing.write_text(
        "# the images of ids 1 and 2\n" + "".join(f"{os.path.relpath(p, work)}\n" for p in first)
    )
    index_script.main(["--images", str(listing), "--index", "idx", "--naming", "market", *MODEL])
    meta = index_script.main(["--images", str(gallery_dir), "--index", "idx", "--add", *MODEL])
    out = capsys.readouterr().out
    assert f"indexed {len(first)} images with model/tiny epoch last" in out
    assert "(4 were in it already)" in out
    idx = gallery.open_index("idx")
    assert [part["rows"] for part in meta["parts"]] == [4, 4] and idx.size == 8
    assert all(isinstance(part, np.memmap) for part in idx.parts)
    assert idx.paths()[:4] == [str(p) for p in first]
    assert idx.labels[:, 0].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]  # ids and cameras from the names
    # The same images in one go: the same features, in the same order, and the same search results.
    index_script.main(["--images", str(gallery_dir), "--index", "whole", "--naming", "market", *MODEL])
    whole = gallery.open_index("whole")
    assert whole.paths() == idx.paths()
    assert np.abs(whole.features() - idx.features()).max() < 1e-6
    q_f = whole.features()[[0, 5]]
    assert (gallery.search(q_f, idx.parts, 5)[0] == gallery.search(q_f, whole.parts, 5)[0]).all()
    # Nothing new: nothing written.
    index_script.main(["--images", str(gallery_dir), "--index", "idx", "--add", *MODEL])
    assert "nothing to add" in capsys.readouterr().out and len(gallery.open_index("idx").parts) == 2


def test_index_refusals_are_one_line(work, tiny_prepared, capsys):
    from test_demo import make_model

    images = str(tiny_prepared / "gallery")
    index_script.main(["--images", images, "--index", "idx", *MODEL])

    def error(argv):
        with pytest.raises(SystemExit):
            run_main(index_script.main, argv)
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    assert "--index idx exists: pass --add to add images to it" in error(
        ["--images", images, "--index", "idx", *MODEL]
    )
    assert "no index there to add to" in error(["--images", images, "--index", "new", "--add", *MODEL])
    assert "an index keeps its naming" in error(
        ["--images", images, "--index", "idx", "--add", "--naming", "market", *MODEL]
    )
    make_model("other")
    assert "idx was written by model/tiny epoch last, not by model/other epoch last" in error(
        ["--images", images, "--index", "idx", "--add", "--name", "other", *CPU]
    )
    (work / "odd.jpg").write_bytes((tiny_prepared / "query/0001").glob("*.jpg").__next__().read_bytes())
    assert "1 of the images do not give labels with --naming" in error(
        ["--images", str(work / "odd.jpg"), "--index", "labelled", "--naming", "market", *MODEL]
    )
    assert "--images nowhere: no such image, folder or list of images" in error(
        ["--images", "nowhere", *MODEL]
    )
    assert "absent.onnx: no such ONNX file; write it with export.py" in error(
        ["--images", images, "--index", "onnx", "--backend", "onnxruntime", "--onnx", "absent.onnx", *MODEL]
    )
    assert not (work / "labelled").exists() and not (work / "onnx").exists()
    with pytest.raises(SystemExit):  # the graph as exported: float32
        index_script.parse_args(["--images", images, "--backend", "onnxruntime", "--bf16"])
    assert "(drop --fp16, --bf16)" in capsys.readouterr().err


def test_index_with_onnxruntime_equals_torch_and_search_reads_it(work, tiny_prepared, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    images = ["--images", str(tiny_prepared / "gallery")]
    (work / "model/tiny/net_last.onnx").unlink(missing_ok=True)
    # The default on a CPU exports the model first, checked on the 8 images it is about to index.
    index_script.main([*images, "--index", "auto", *MODEL])
    out = capsys.readouterr().out
    assert "exported model/tiny/net_last.onnx for onnxruntime; against PyTorch: max |difference|" in out
    assert "top-10 rankings identical for 8 of 8 queries" in out
    index_script.main([*images, "--index", "onnx", "--backend", "onnxruntime", *MODEL])
    index_script.main([*images, "--index", "torch", "--backend", "torch", *MODEL])
    by_onnx, by_torch = gallery.open_index("onnx"), gallery.open_index("torch")
    assert by_onnx.paths() == by_torch.paths() == gallery.open_index("auto").paths()
    np.testing.assert_allclose(by_onnx.features(), by_torch.features(), atol=1e-4)
    assert (
        by_onnx.meta["extraction"]
        == "image + flip, area scales 1, 64x32, float32, onnxruntime model/tiny/net_last.onnx"
    )
    assert by_torch.meta["extraction"] == "image + flip, area scales 1, 64x32, float32"
    assert gallery.open_index("auto").meta["extraction"] == by_onnx.meta["extraction"]
    # search.py extracts its queries with PyTorch: comparable with the index of onnxruntime.
    target = sorted((tiny_prepared / "gallery").glob("*/*.jpg"))[5]
    copy = work / "queries" / "copy.jpg"  # the same pixels, another name: distance 0
    copy.parent.mkdir()
    shutil.copyfile(target, copy)
    results = search.main(["--index", "onnx", "--query", str(copy), "--output", "found", *MODEL])
    [q] = results["queries"]
    assert q["results"][0]["gallery"] == str(target) and q["results"][0]["distance"] < 1e-3
    # PyTorch adds to an index of onnxruntime, and the other way round.
    index_script.main(["--images", str(tiny_prepared / "query"), "--index", "onnx", "--add", "--backend", "torch",
                       *MODEL])  # fmt: skip
    assert gallery.open_index("onnx").size == 12


def test_index_with_two_processes_writes_what_one_writes(work, tiny_prepared, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    images = ["--images", str(tiny_prepared), "--naming", "market", "--batchsize", "5"]  # 44 images
    index_script.main([*images, "--index", "one", *MODEL])
    (work / "model/tiny/net_last.onnx").unlink()  # the first process exports it again, the other waits
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29543",
                str(ROOT / "index.py")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*torchrun, *images, "--index", "two", *MODEL], capture_output=True, text=True,
                            timeout=300, check=False, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "exported model/tiny/net_last.onnx" in result.stdout
    assert result.stdout.count("indexed 44 images") == 1 and "with 2 processes" in result.stdout
    one, two = gallery.open_index("one"), gallery.open_index("two")
    assert two.paths() == one.paths() and (two.labels == one.labels).all()
    np.testing.assert_allclose(two.features(), one.features(), atol=1e-5)
    assert two.meta["extraction"] == one.meta["extraction"] and len(two.meta["parts"]) == 1
    # An error before the extraction: one line from each process, and no index.
    result = subprocess.run([*torchrun, *images, "--index", "bad", "--backend", "onnxruntime", "--onnx",
                             "absent.onnx", *MODEL], capture_output=True, text=True, timeout=300, check=False,
                            env=env)  # fmt: skip
    assert result.returncode != 0
    assert (
        result.stderr.count("error: absent.onnx: no such ONNX file; write it with export.py") == 2
    )  # lines may interleave
    assert not (work / "bad").exists()


# ----------------------------------------------------------------------------------------------------
# search.py


def test_search_json_and_csv_on_a_tiny_index_with_a_known_answer(work, tiny_prepared, capsys):
    index_script.main(["--images", str(tiny_prepared / "gallery"), "--index", "idx", *MODEL])  # unlabelled
    target = sorted((tiny_prepared / "gallery").glob("*/*.jpg"))[5]
    query = (
        work / "queries" / "copy <of> \"it\" &amp; 'more'.jpg"
    )  # the same pixels, another name: distance 0
    query.parent.mkdir()
    shutil.copyfile(target, query)
    results = search.main(["--index", "idx", "--query", str(query.parent), "--top_k", "3", "--threshold", "0.1",
                           "--output", "found", *MODEL])  # fmt: skip
    saved = json.loads((work / "found" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(saved) == {"index", "index_size", "search", "model", "checkpoint_sha256", "extraction", "distance",
                          "threshold", "threshold_from", "top_k", "queries"}  # fmt: skip
    assert (saved["index_size"], saved["top_k"], saved["threshold"], saved["threshold_from"]) == (
        8,
        3,
        0.1,
        "--threshold",
    )
    [q] = saved["queries"]
    assert (
        q["query"] == str(query) and q["answer"] == "match" and q["id"] is None and not q["left_out_itself"]
    )
    first = q["results"][0]
    assert first["gallery"] == str(target) and first["gallery_index"] == 5 and first["distance"] < 1e-3
    assert first["id"] is None and first["kind"] is None and q["best_distance"] == first["distance"]
    assert [hit["rank"] for hit in q["results"]] == [1, 2, 3]
    distances = [hit["distance"] for hit in q["results"]]
    assert distances == sorted(distances)
    # The distances are the Euclidean distances of the index's unit features.
    g_f = gallery.open_index("idx").features()
    indices = [hit["gallery_index"] for hit in q["results"]]
    expected = np.sqrt(np.clip(2 - 2 * (g_f[indices] @ g_f[5]), 0, None))
    assert distances == pytest.approx(expected, abs=2e-3)
    with open(work / "found" / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == search.CSV_COLUMNS
    assert rows[1] == [str(query), "", "", "match", "1", str(target), repr(first["distance"]), "", "", ""]
    assert [float(row[6]) for row in rows[1:]] == distances and len(rows) == 4
    assert sorted(os.listdir(work / "found")) == ["ABOUT.txt", "index.html", "results.csv", "results.json",
                                                  "results.png", "thumbs"]  # fmt: skip
    check_page(work / "found" / "index.html")
    # A query that is itself in the index is left out of its own results; "no match" above the threshold.
    results = search.main(
        ["--index", "idx", "--query", str(target), "--threshold", "0.0001", "--output", "found", *MODEL]
    )
    [q] = results["queries"]
    assert q["left_out_itself"] and str(target) not in [hit["gallery"] for hit in q["results"]]
    assert q["answer"] == "no match" and len(q["results"]) == 7


def test_calibrated_threshold_answers_no_match_for_noise(work, tiny_prepared, capsys):
    test_script.main(["--name", "tiny", "--test_dir", str(tiny_prepared), "--result_file", "test.mat", *CPU])
    index_script.main(
        ["--images", str(tiny_prepared / "gallery"), "--index", "idx", "--naming", "market", *MODEL]
    )
    capsys.readouterr()
    calibration = calibrate.main(["--result_file", "test.mat", "--index", "idx", "--output", "cal.png"])
    out = capsys.readouterr().out
    assert f"stored threshold {calibration['threshold']:.4f} in idx: search.py uses it" in out
    assert out.splitlines()[0].split()[:2] == ["target", "threshold"] and Path("cal.png").is_file()
    assert "held-out check, 20 random halvings of the 4 test identities" in out
    again = calibrate.main(["--result_file", "test.mat", "--check_splits", "0", "--output", "cal.png"])
    assert again == calibration and "held-out" not in capsys.readouterr().out
    stored = gallery.open_index("idx").meta["threshold"]
    assert stored["threshold"] == calibration["threshold"] and stored["gallery_size"] == 8
    queries = work / "queries"
    noise_images(queries)
    for path in (tiny_prepared / "query").glob("*/*.jpg"):
        shutil.copyfile(path, queries / path.name)
    results = search.main(["--index", "idx", "--query", str(queries), "--output", "found", *MODEL])
    assert results["threshold"] == calibration["threshold"]
    assert results["threshold_from"] == "calibrate.py: false-match rate 1.0% on test.mat"
    answers = {Path(q["query"]).name: q["answer"] for q in results["queries"]}
    assert [answers[f"noise{i}.png"] for i in range(3)] == ["no match"] * 3
    labelled = [q for q in results["queries"] if q["id"] is not None]
    assert len(labelled) == 4 and all(q["answer"] == "match" for q in labelled)  # the test queries
    assert all(q["results"][0]["kind"] == "match" for q in labelled)  # framed by the Market-1501 rule
    links = check_page(work / "found" / "index.html")
    assert sum(link.startswith("thumbs/") for link in links) == len(results["queries"]) * (
        1 + results["top_k"]
    )


def test_calibrate_and_search_refuse_another_model(work, tiny_prepared, capsys):
    from test_demo import make_model

    index_script.main(["--images", str(tiny_prepared / "gallery"), "--index", "idx", *MODEL])
    make_model("other")
    test_script.main(
        ["--name", "other", "--test_dir", str(tiny_prepared), "--result_file", "other.mat", *CPU]
    )
    with pytest.raises(
        UserError, match="other.mat was written by model/other epoch last, not by model/tiny epoch last"
    ):
        calibrate.main(["--result_file", "other.mat", "--index", "idx"])
    with pytest.raises(
        UserError, match="idx was written by model/tiny epoch last, not by model/other epoch last"
    ):
        search.main(["--index", "idx", "--query", str(tiny_prepared / "query"), "--name", "other", *CPU])
    with pytest.raises(UserError, match="--query nowhere: no such image"):
        search.main(["--index", "idx", "--query", "nowhere", *MODEL])
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(
        UserError, match="--output .*mine exists, is not empty and was not written by search.py"
    ):
        search.main(["--index", "idx", "--query", str(tiny_prepared / "query"), "--output", "mine", *MODEL])
    assert (work / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(SystemExit):
        calibrate.main(["--result_file", "other.mat", "--false_match_rate", "1.5"])


# ----------------------------------------------------------------------------------------------------
# evaluate.py --html


def test_evaluation_report_page(work, tiny_prepared, capsys):
    test_script.main(
        ["--name", "tiny", "--test_dir", str(tiny_prepared), "--result_file", "test.mat", "--multi", *CPU]
    )
    runs = evaluate.main(["--result_file", "test.mat", "--html", "report", "--json", "r.json"])
    assert "per_query" not in runs[0] and "per_query" not in json.loads(Path("r.json").read_text())
    assert f"wrote {work / 'report'}/index.html" in capsys.readouterr().out
    assert sorted(os.listdir("report")) == ["ABOUT.txt", "cmc-multi-query.png", "cmc-single-query.png",
                                            "index.html", "thumbs"]  # fmt: skip
    links = check_page(work / "report" / "index.html")
    text = (work / "report" / "index.html").read_text()
    assert f"<td>{runs[0]['rank1']:.4f}</td>" in text and "multi-query" in text
    assert "The 4 queries with the lowest AP (non-interpolated), and their top 8" in text
    # Each of the 4 queries with its top 8 (the whole gallery), twice (single- and multi-query).
    assert sum(link.startswith("thumbs/") for link in links) == 2 * 4 * (1 + 8)


def test_help_of_the_new_scripts():
    for script, options in [
        (
            "index.py",
            [
                "--images",
                "--index",
                "--add",
                "--naming",
                "--batchsize",
                "--backend",
                "--onnx",
                "--name",
                "--gpu_ids",
            ],
        ),
        ("search.py", ["--index", "--query", "--top_k", "--threshold", "--output", "--name"]),
        ("calibrate.py", ["--result_file", "--index", "--false_match_rate", "--output"]),
        ("evaluate.py", ["--html"]),
    ]:
        run = subprocess.run(
            [sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, check=False
        )
        assert run.returncode == 0, run.stderr
        for option in options:
            assert option in run.stdout, (script, option)


@pytest.mark.parametrize(
    "script, argv, message",
    [
        (search, ["--query", "x.jpg", "--top_k", "0"], "argument --top_k: 0: give at least 1"),
        (index_script, ["--images", "x", "--batchsize", "-2"], "argument --batchsize: -2: give at least 1"),
        (
            index_script,
            ["--images", "x", "--batchsize", "two"],
            "argument --batchsize: 'two' is not a whole number",
        ),
    ],
)
def test_counts_are_checked_by_argparse(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        script.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# faiss search methods (index.py --search): skipped when faiss is not installed.


def random_index(folder: Path, n: int, dim: int = 32, parts: int = 2) -> gallery.GalleryIndex:
    """An index of n random unit features in `parts` parts, as index.py writes it."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((n, dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    provenance = {"model": "model/x epoch last", "model_dir": "model/x", "model_epoch": "last",
                  "checkpoint_sha256": "0" * 64, "extraction": "none"}  # fmt: skip
    meta = gallery.new_meta(provenance, dim, None, None, False)
    labels = np.full((n, 2), gallery.UNKNOWN)
    pieces = np.array_split(np.arange(n), parts)
    meta = gallery.create_index(
        folder, meta, features[pieces[0]], [f"{i}.jpg" for i in pieces[0]], labels[pieces[0]]
    )
    for piece in pieces[1:]:
        meta = gallery.add_part(folder, meta, features[piece], [f"{i}.jpg" for i in piece], labels[piece])
    return gallery.open_index(folder)


def with_search(index: gallery.GalleryIndex, record: dict) -> gallery.GalleryIndex:
    gallery.write_meta(index.folder, {**index.meta, "search": record})
    return gallery.open_index(index.folder)


def test_faiss_exact_equals_the_exact_search_and_faiss_ivf_reports_its_recall(tmp_path):
    pytest.importorskip("faiss")
    index = random_index(tmp_path / "idx", 4000)
    q_f = index.features()[:50] + 0.01  # near their own image, not equal: no ties
    q_f /= np.linalg.norm(q_f, axis=1, keepdims=True)
    exclude = np.r_[np.arange(10), np.full(40, -1)]  # the first 10 leave out their own image
    exact_i, exact_d = gallery.search(q_f, index.parts, 10, exclude)
    flat = with_search(index, gallery.build_faiss(index, "faiss_exact"))
    flat_i, flat_d = gallery.search_index(flat, q_f, 10, exclude)
    assert (flat_i == exact_i).all() and np.abs(flat_d - exact_d).max() < 1e-4
    assert not (flat_i[:10] == np.arange(10)[:, None]).any()
    # The approximate index: nlist from the size; recall@10 measured against the exact search.
    record = gallery.build_faiss(index, "faiss_ivf", nprobe=1)
    assert (
        record["nlist"] == gallery.ivf_lists(4000) == 102 and record["nprobe"] == 1 and record["rows"] == 4000
    )
    assert 0 < record["recall_at_10"] < 0.9  # one list of 102 read: many true neighbours missed
    ivf = with_search(index, record)
    ivf_i, _ = gallery.search_index(ivf, q_f, 10, exclude)
    measured = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ivf_i, exact_i)])
    assert 0 < measured < 1
    # Without --nprobe: the fewest lists (1, 2, 4, ...) that reach the target recall.
    tuned = gallery.build_faiss(index, "faiss_ivf", target_recall=0.8)
    assert tuned["recall_at_10"] >= 0.8 and tuned["target_recall"] == 0.8
    fewer = gallery.build_faiss(index, "faiss_ivf", nprobe=tuned["nprobe"] // 2)
    assert fewer["recall_at_10"] < 0.8 < tuned["recall_at_10"]
    # Every list read: the approximate index finds exactly the exact top 10.
    full = with_search(index, gallery.build_faiss(index, "faiss_ivf", nprobe=1000))
    assert full.meta["search"]["recall_at_10"] == 1.0
    assert (gallery.search_index(full, q_f, 10, exclude)[0] == exact_i).all()
    # An index whose faiss file holds fewer images than it has: a one-line error, not wrong answers.
    stale = with_search(index, {**full.meta["search"], "rows": 3000})
    with pytest.raises(UserError, match="holds 3000 of the 4000 images .*run index.py --add on it again"):
        gallery.search_index(stale, q_f, 10)


def test_index_py_search_methods_end_to_end(work, tiny_prepared, capsys):
    pytest.importorskip("faiss")
    images = str(tiny_prepared / "gallery")
    index_script.main(["--images", images, "--index", "exact", *MODEL])
    meta = index_script.main(["--images", images, "--index", "ivf", "--search", "faiss_ivf", *MODEL])
    assert meta["search"]["method"] == "faiss_ivf" and meta["search"]["rows"] == 8
    assert "built the faiss_ivf index (1 lists, 1 read per query) of 8 images" in capsys.readouterr().out
    assert meta["search"]["recall_at_10"] == 1.0 and meta["search"]["target_recall"] == gallery.TARGET_RECALL
    query = ["--query", str(tiny_prepared / "query"), "--top_k", "3", *MODEL]
    by_exact = search.main(["--index", "exact", "--output", "a", *query])
    by_ivf = search.main(["--index", "ivf", "--output", "b", *query])
    assert by_ivf["search"]["method"] == "faiss_ivf" and by_exact["search"] == {"method": "exact"}
    for a, b in zip(by_exact["queries"], by_ivf["queries"]):
        assert [r["gallery"] for r in a["results"]] == [r["gallery"] for r in b["results"]]
        assert np.allclose(
            [r["distance"] for r in a["results"]], [r["distance"] for r in b["results"]], atol=1e-4
        )
    # --add switches the method when asked, and keeps it otherwise.
    meta = index_script.main(
        ["--images", images, "--index", "exact", "--add", "--search", "faiss_exact", *MODEL]
    )
    assert meta["search"]["method"] == "faiss_exact" and (work / "exact" / gallery.FAISS_FILE).is_file()
    meta = index_script.main(["--images", images, "--index", "exact", "--add", *MODEL])
    assert meta["search"]["method"] == "faiss_exact"
    # --nprobe fixes the lists read instead of the target recall; a recall outside 0..1 is refused.
    meta = index_script.main(
        ["--images", images, "--index", "exact", "--add", "--search", "faiss_ivf", "--nprobe", "1", *MODEL]
    )
    assert meta["search"]["nprobe"] == 1 and "target_recall" not in meta["search"]
    with pytest.raises(SystemExit):
        index_script.parse_args(["--images", images, "--target_recall", "1.5"])
    assert "argument --target_recall: 1.5 must be between 0 and 1" in capsys.readouterr().err


def test_faiss_methods_without_faiss_are_a_one_line_error(work, tiny_prepared, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if not installed: `import faiss` fails
    with pytest.raises(SystemExit):
        run_main(index_script.main, ["--images", str(tiny_prepared / "gallery"), "--index", "i",
                                     "--search", "faiss_ivf", *MODEL])  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install faiss-cpu" in err
    assert not (work / "i").exists()

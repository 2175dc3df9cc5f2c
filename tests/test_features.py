"""features.py: the features file (round trip, classic files, one-line errors), multi-query
features, and the extraction of a batch (flip, scales, PCB parts)."""

import numpy as np
import pytest
import scipy.io
import torch

import evaluate
from features import embed_batch, load_features, multi_query_features, save_features
from model import ModelConfig, build_model
from utils import UserError, run_main

# ----------------------------------------------------------------------------------------------------
# The features file.


def random_features(n_q=12, n_g=40, n_m=0, dim=8, seed=0):
    rng = np.random.default_rng(seed)

    def unit(n):
        f = rng.standard_normal((n, dim)).astype(np.float32)
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    feats = {
        "query_f": unit(n_q),
        "query_label": rng.integers(1, 8, n_q),  # ids 6 and 7 are not in the gallery
        "query_cam": rng.integers(1, 4, n_q),
        "gallery_f": unit(n_g),
        "gallery_label": rng.integers(-1, 6, n_g),
        "gallery_cam": rng.integers(1, 4, n_g),
        "query_path": [f"query/{i:04d}/{i:04d}_c1s1_0000{i}_00 é.jpg" for i in range(n_q)],
        "gallery_path": [f"gallery/{i:04d}_c2s1_0000{i}_00.jpg " for i in range(n_g)],
        "model": "model/ft_ResNet50 epoch last",
    }
    if n_m:
        feats.update(
            mquery_f=unit(n_m), mquery_label=rng.integers(1, 6, n_m), mquery_cam=rng.integers(1, 4, n_m)
        )
    return feats


def test_features_round_trip(tmp_path):
    feats = random_features(n_m=20)
    save_features(tmp_path / "f.mat", feats)
    loaded = load_features(tmp_path / "f.mat")
    assert sorted(loaded) == sorted(feats)
    for key, value in feats.items():
        if isinstance(value, np.ndarray):
            assert loaded[key].shape == value.shape and loaded[key].dtype == value.dtype, key
            np.testing.assert_array_equal(loaded[key], value)
        else:
            assert loaded[key] == value, key  # paths keep their spaces and accents
    assert loaded["query_f"].dtype == np.float32 and loaded["query_label"].dtype == np.int64
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_classic_file_with_char_matrix_paths_loads(tmp_path):
    # The classic test.py saves lists as (1, n) rows and paths as a space-padded char matrix.
    feats = random_features()
    mat = {k: v for k, v in feats.items() if k not in ("query_path", "gallery_path", "model")}
    mat["query_path"] = feats["query_path"]
    scipy.io.savemat(tmp_path / "classic.mat", mat)
    loaded = load_features(tmp_path / "classic.mat")
    assert loaded["query_path"] == feats["query_path"]  # padding stripped
    assert loaded["gallery_label"].shape == (40,)


def test_save_rejects_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        save_features(tmp_path / "f.mat", {**random_features(), "query_feature": 1})


def write_mat(path, feats):
    scipy.io.savemat(path, feats)
    return path


@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (lambda p: p.with_name("missing.mat"), "no such features file; run test.py first"),
        (lambda p: p.write_bytes(p.read_bytes()[:3000]) and p, "cannot read the features file"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]) and p, "cannot read the features file"),
        (lambda p: p.write_text("not a mat file\n" * 20) and p, "cannot read the features file"),
        (
            lambda p: write_mat(
                p, {k: v for k, v in random_features().items() if k not in ("gallery_cam", "query_f")}
            ),
            "missing query_f, gallery_cam",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "query_label": np.arange(11)}),
            "query_f has 12 rows but query_label has 11 entries",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "gallery_path": ["a.jpg"]}),
            "gallery_path has 1 paths but there are 40 features",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "query_f": np.full((12, 8), np.nan, np.float32)}),
            "query_f has 12 rows with NaN or inf",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "gallery_f": random_features(dim=6)["gallery_f"]}),
            "gallery_f has 6-d features but query_f has 8-d",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "query_f": np.ones((12, 2, 4), np.float32)}),
            "query_f must be a non-empty (n, d) array",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "query_f": 2 * random_features()["query_f"]}),
            "query_f rows must be L2-normalised",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "query_cam": np.full(12, 1.5)}),
            "query_cam must hold integers",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "mquery_f": random_features()["query_f"]}),
            "missing mquery_label, mquery_cam",
        ),
    ],
)
def test_bad_features_file_is_a_one_line_error(tmp_path, capsys, make_bad, message):
    good = tmp_path / "pytorch_result.mat"
    save_features(good, random_features())
    bad = make_bad(good)
    with pytest.raises(SystemExit) as exit_info:
        run_main(evaluate.main, ["--result_file", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and message in err, err


def test_writing_bad_features_fails_before_writing(tmp_path):
    with pytest.raises(UserError, match="cannot write .*query_f has 12 rows with NaN"):
        save_features(tmp_path / "f.mat", {**random_features(), "query_f": np.full((12, 8), np.nan)})
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------
# Multi-query.


def test_multi_query_features_average_same_id_and_camera():
    feats = {
        "query_f": np.array([[1, 0, 0], [0, 1, 0]], np.float32),
        "query_label": np.array([1, 2]),
        "query_cam": np.array([1, 1]),
        # id 1 camera 1: two images whose mean is (0.5, 0.5, 0) -> normalised (0.7071, 0.7071, 0).
        # id 1 camera 2 and id 2 camera 2 belong to no query; query 2 (id 2, camera 1) has none.
        "mquery_f": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], np.float32),
        "mquery_label": np.array([1, 1, 1, 2]),
        "mquery_cam": np.array([1, 1, 2, 2]),
    }
    q_f, n_alone = multi_query_features(feats)
    np.testing.assert_allclose(q_f, [[2**-0.5, 2**-0.5, 0], [0, 1, 0]], atol=1e-6)
    assert n_alone == 1 and q_f.dtype == np.float32


# ----------------------------------------------------------------------------------------------------
# Extraction of a batch.


def test_embedding_is_unit_norm_and_flip_invariant():
    net = build_model(ModelConfig(nclasses=5, backbone="resnet18")).eval()
    x = torch.randn(3, 3, 64, 32)
    f = embed_batch(net, x)
    assert f.shape == (3, 512)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(3))
    # image + flip summed: the flipped image gets the same feature
    torch.testing.assert_close(embed_batch(net, x.flip(dims=[3])), f, atol=1e-5, rtol=1e-5)


def test_multi_scale_sums_scales_of_the_original():
    net = build_model(ModelConfig(nclasses=5, backbone="resnet18")).eval()
    x = torch.randn(2, 3, 64, 32)

    def raw(images):
        return net.embed(images) + net.embed(images.flip(dims=[3]))

    with torch.no_grad():
        small = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bicubic", align_corners=False)
        big = torch.nn.functional.interpolate(x, scale_factor=1.5, mode="bicubic", align_corners=False)
        expected = raw(x) + raw(small) + raw(big)
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(embed_batch(net, x, scales=(1, 0.5, 1.5)), expected, atol=1e-5, rtol=1e-4)


def test_pcb_embedding_normalisation():
    net = build_model(ModelConfig(nclasses=5, PCB=True)).eval()
    f = embed_batch(net, torch.randn(2, 3, 96, 48))
    assert f.shape == (2, 6 * 2048)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(2))
    parts = f.view(2, 6, 2048).norm(dim=2)
    torch.testing.assert_close(parts, torch.full((2, 6), 6**-0.5))

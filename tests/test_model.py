"""model.py: backbones, heads, PCB, the factory, pretrained weights and the retrieval embedding."""

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

import model
from model import BACKBONES, PCB, ClassBlock, build_model, checkpoint_path, extract_embedding
from utils import UserError

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared/weights/mobilenet_v2_imagenet_features.pth"


def opts(**kw):
    base = {"backbone": "resnet18", "nclasses": 5, "stride": 2, "droprate": 0.5, "linear_num": 512}
    return {**base, **kw}


def test_class_block_shapes_and_init():
    block = ClassBlock(64, 7, droprate=0.5, linear_num=32).eval()
    x = torch.randn(4, 64)
    assert block(x).shape == (4, 7)
    assert block.embed(x).shape == (4, 32)
    assert block.classifier[-1].weight.std() < 0.01  # small normal init of the classifier
    no_linear = ClassBlock(64, 7, linear_num=0).eval()
    assert no_linear.embed(x).shape == (4, 64)
    assert not any(isinstance(m, torch.nn.Linear) for m in no_linear.bottleneck)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_forward_and_embed(backbone):
    net = build_model(opts(backbone=backbone)).eval()
    x = torch.randn(2, 3, 64, 32)
    assert net(x).shape == (2, 5)
    assert net.embed(x).shape == (2, 512)
    assert net.pooled(x).shape == (2, BACKBONES[backbone][1])  # the table's feature size is right


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_last_stride_1_doubles_the_feature_map(backbone):
    x = torch.randn(1, 3, 64, 32)
    maps = [build_model(opts(backbone=backbone, stride=s)).eval().backbone(x).shape for s in (2, 1)]
    assert maps[1][2] > maps[0][2] and maps[1][3] > maps[0][3]


def test_pcb_parts():
    net = build_model({"PCB": True, "nclasses": 5, "backbone": "resnet18"}).eval()
    assert isinstance(net, PCB)  # PCB is always ResNet-50
    logits = net(torch.randn(2, 3, 96, 48))
    assert len(logits) == 6 and all(p.shape == (2, 5) for p in logits)
    assert net.embed(torch.randn(2, 3, 96, 48)).shape == (2, 6, 2048)
    assert all(block.embedding_dim == 256 for block in net.classifiers)


def test_state_dict_round_trip_through_build_model():
    a = build_model(opts(linear_num=64, stride=1))
    b = build_model(opts(linear_num=64, stride=1))
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 32)
    assert torch.equal(a.eval().embed(x), b.eval().embed(x))


def test_pretrained_path_accepts_only_missing_classifier(tmp_path):
    state = torchvision.models.mobilenet_v2().state_dict()
    del state["classifier.1.weight"], state["classifier.1.bias"]
    good = tmp_path / "good.pth"
    torch.save(state, good)
    net = build_model(opts(backbone="mobilenet_v2", pretrained=True, pretrained_path=str(good)))
    assert torch.equal(net.backbone[0][0].weight, state["features.0.0.weight"])

    del state["features.0.0.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(UserError, match="features.0.0.weight"):
        build_model(opts(backbone="mobilenet_v2", pretrained=True, pretrained_path=str(bad)))
    with pytest.raises(UserError, match="no such file"):
        build_model(opts(pretrained=True, pretrained_path=str(tmp_path / "absent.pth")))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        build_model(opts(pretrained=True, pretrained_path=str(tmp_path / "junk.pth")))


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="shared ImageNet weights absent")
def test_real_imagenet_weights_file():
    net = build_model(opts(backbone="mobilenet_v2", pretrained=True, pretrained_path=str(SHARED_WEIGHTS)))
    reference = torch.load(SHARED_WEIGHTS, weights_only=True)
    assert torch.equal(net.backbone[18][0].weight, reference["features.18.0.weight"])


def test_offline_download_error_names_both_ways_out(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError, match="--no-pretrained.*--pretrained_path"):
        model.load_imagenet_backbone("resnet18", pretrained=True, pretrained_path=None)


def test_unknown_backbone():
    with pytest.raises(UserError, match="unknown backbone 'vgg'"):
        build_model(opts(backbone="vgg"))


def test_checkpoint_path_lists_available(tmp_path):
    (tmp_path / "net_009.pth").touch()
    (tmp_path / "net_last.pth").touch()
    assert checkpoint_path(tmp_path, "9").name == "net_009.pth"
    assert checkpoint_path(tmp_path, "last").name == "net_last.pth"
    with pytest.raises(UserError, match="one of: 009, last"):
        checkpoint_path(tmp_path, "59")


def test_embedding_is_unit_norm_and_flip_invariant():
    net = build_model(opts()).eval()
    x = torch.randn(3, 3, 64, 32)
    f = extract_embedding(net, x)
    assert f.shape == (3, 512)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(3))
    # image + flip summed: the flipped image gets the same feature
    torch.testing.assert_close(extract_embedding(net, x.flip(dims=[3])), f, atol=1e-5, rtol=1e-5)


def test_multi_scale_sums_scales_of_the_original():
    net = build_model(opts()).eval()
    x = torch.randn(2, 3, 64, 32)

    def raw(images):
        return net.embed(images) + net.embed(images.flip(dims=[3]))

    with torch.no_grad():
        small = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bicubic", align_corners=False)
        big = torch.nn.functional.interpolate(x, scale_factor=1.5, mode="bicubic", align_corners=False)
        expected = raw(x) + raw(small) + raw(big)
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(
        extract_embedding(net, x, scales=(1, 0.5, 1.5)), expected, atol=1e-5, rtol=1e-4
    )


def test_pcb_embedding_normalisation():
    net = build_model({"PCB": True, "nclasses": 5}).eval()
    f = extract_embedding(net, torch.randn(2, 3, 96, 48))
    assert f.shape == (2, 6 * 2048)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(2))
    parts = f.view(2, 6, 2048).norm(dim=2)
    torch.testing.assert_close(parts, torch.full((2, 6), 6**-0.5))

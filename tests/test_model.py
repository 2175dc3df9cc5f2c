"""model.py: the backbone table, the model configuration, heads, PCB, the factory and pretrained weights."""

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

import model
from model import BACKBONES, PCB, ClassBlock, ModelConfig, build_model, checkpoint_path
from utils import UserError

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared/weights/mobilenet_v2_imagenet_features.pth"


def config(**kw) -> ModelConfig:
    return ModelConfig(**{"backbone": "resnet18", "nclasses": 5, **kw})


def test_class_block_shapes_and_init():
    block = ClassBlock(64, 7, droprate=0.5, linear_num=32).eval()
    x = torch.randn(4, 64)
    assert block(x).shape == (4, 7)
    assert block.embed(x).shape == (4, 32)
    assert block.classifier[-1].weight.std() < 0.01  # small normal init of the classifier
    no_linear = ClassBlock(64, 7, droprate=0.5, linear_num=0).eval()
    assert no_linear.embed(x).shape == (4, 64)
    assert not any(isinstance(m, torch.nn.Linear) for m in no_linear.bottleneck)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_forward_and_embed(backbone):
    net = build_model(config(backbone=backbone)).eval()
    x = torch.randn(2, 3, 64, 32)
    assert net(x).shape == (2, 5)
    assert net.embed(x).shape == (2, 512)
    assert net.pooled(x).shape == (2, BACKBONES[backbone].feature_dim)  # the table's feature size is right


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_last_stride_1_doubles_the_feature_map(backbone):
    x = torch.randn(1, 3, 64, 32)
    maps = [build_model(config(backbone=backbone, stride=s)).eval().backbone(x).shape for s in (2, 1)]
    assert maps[1][2] > maps[0][2] and maps[1][3] > maps[0][3]


def test_pcb_parts():
    net = build_model(ModelConfig(nclasses=5, PCB=True)).eval()
    assert isinstance(net, PCB)
    logits = net(torch.randn(2, 3, 96, 48))
    assert len(logits) == 6 and all(p.shape == (2, 5) for p in logits)
    assert net.embed(torch.randn(2, 3, 96, 48)).shape == (2, 6, 2048)
    assert all(block.embedding_dim == 256 for block in net.classifiers)


def test_state_dict_round_trip_through_build_model():
    a = build_model(config(linear_num=64, stride=1))
    b = build_model(config(linear_num=64, stride=1))
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 32)
    assert torch.equal(a.eval().embed(x), b.eval().embed(x))


def test_pretrained_path_accepts_only_missing_classifier(tmp_path):
    state = torchvision.models.mobilenet_v2().state_dict()
    del state["classifier.1.weight"], state["classifier.1.bias"]
    good = tmp_path / "good.pth"
    torch.save(state, good)
    net = build_model(config(backbone="mobilenet_v2"), pretrained=True, pretrained_path=str(good))
    assert torch.equal(net.backbone[0][0].weight, state["features.0.0.weight"])

    del state["features.0.0.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(UserError, match="features.0.0.weight"):
        build_model(config(backbone="mobilenet_v2"), pretrained=True, pretrained_path=str(bad))
    with pytest.raises(UserError, match="no such file"):
        build_model(config(), pretrained=True, pretrained_path=str(tmp_path / "absent.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        build_model(config(), pretrained=True, pretrained_path=str(tmp_path / "junk.pth"))


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="shared ImageNet weights absent")
def test_real_imagenet_weights_file():
    net = build_model(config(backbone="mobilenet_v2"), pretrained=True, pretrained_path=str(SHARED_WEIGHTS))
    reference = torch.load(SHARED_WEIGHTS, weights_only=True)
    assert torch.equal(net.backbone[18][0].weight, reference["features.18.0.weight"])


def test_offline_download_error_names_both_ways_out(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError, match="--no-pretrained.*--pretrained_path"):
        model.load_imagenet_backbone("resnet18", pretrained=True, pretrained_path=None)


def test_unknown_backbone_and_pcb_on_another_backbone():
    with pytest.raises(UserError, match="unknown backbone 'vgg'"):
        config(backbone="vgg")
    with pytest.raises(UserError, match="--PCB is built on resnet50"):
        config(PCB=True)


def test_config_defaults_and_input_size():
    assert (ModelConfig(nclasses=3).height, ModelConfig(nclasses=3).width) == (256, 128)
    pcb = ModelConfig(nclasses=3, PCB=True)
    assert (pcb.height, pcb.width, pcb.stride, pcb.droprate) == (384, 192, 2, 0.5)
    assert ModelConfig.from_dict(pcb.to_dict(), "here") == pcb


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("linear_num"), "here: missing key 'linear_num' in the model configuration"),
        (lambda d: d.update(use_swin=True), "here: unknown key 'use_swin' in the model configuration"),
    ],
)
def test_config_is_read_strictly(change, message):
    values = config().to_dict()
    change(values)
    with pytest.raises(UserError, match=message):
        ModelConfig.from_dict(values, "here")


def test_checkpoint_path_lists_available(tmp_path):
    (tmp_path / "net_009.pth").touch()
    (tmp_path / "net_last.pth").touch()
    assert checkpoint_path(tmp_path, "9").name == "net_009.pth"
    assert checkpoint_path(tmp_path, "last").name == "net_last.pth"
    with pytest.raises(UserError, match="one of: 009, last"):
        checkpoint_path(tmp_path, "59")

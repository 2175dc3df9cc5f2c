"""model.py: the backbone table, the model configuration, heads, PCB, the factory and pretrained weights."""

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

import model
from model import (
    BACKBONES,
    PCB,
    BNNeck,
    ClassBlock,
    GeM,
    ModelConfig,
    OSNet,
    build_model,
    checkpoint_path,
    load_trained_model,
)
from utils import UserError, save_yaml

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared/weights/mobilenet_v2_imagenet_features.pth"


def config(**kw) -> ModelConfig:
    return ModelConfig(**{"backbone": "resnet18", "nclasses": 5, **kw})


def test_class_block_shapes_and_init():
    block = ClassBlock(64, 7, droprate=0.5, linear_num=32).eval()
    x = torch.randn(4, 64)
    logits, feature = block(x)
    assert logits.shape == (4, 7) and torch.equal(feature, block.embed(x))  # metric feature = embedding
    assert block.embed(x).shape == (4, 32)
    assert block.classifier[-1].weight.std() < 0.01  # small normal init of the classifier
    no_linear = ClassBlock(64, 7, droprate=0.5, linear_num=0).eval()
    assert no_linear.embed(x).shape == (4, 64)
    assert not any(isinstance(m, torch.nn.Linear) for m in no_linear.bottleneck)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_trains_a_step_and_round_trips(backbone, tmp_path):
    """Build at a small input, one SGD step, then save as train.py does and rebuild as test.py does."""
    cfg = config(backbone=backbone, height=64, width=32)
    net = build_model(cfg).train()
    x = torch.randn(4, 3, 64, 32)
    assert net.pooled(x).shape == (4, BACKBONES[backbone].feature_dim)  # the table's feature size is right
    before = net.classifier.classifier[-1].weight.clone()
    logits, feature = net(x)
    assert logits.shape == (4, 5) and feature.shape == (4, 512) and net.feature_dim == 512
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    optimizer.step()
    assert not torch.equal(before, net.classifier.classifier[-1].weight)
    assert net.eval().embed(x).shape == (4, 512) and net.feature_map(x).dim() == 4
    save_yaml(tmp_path / "opts.yaml", {"model": cfg.to_dict()})
    torch.save(net.state_dict(), tmp_path / "net_last.pth")
    rebuilt, rebuilt_cfg = load_trained_model(tmp_path)  # strict load through build_model
    assert rebuilt_cfg == cfg and torch.equal(rebuilt.embed(x), net.embed(x))


@pytest.mark.parametrize("backbone", [b for b, row in BACKBONES.items() if row.last_stride_1])
def test_last_stride_1_doubles_the_feature_map(backbone):
    x = torch.randn(1, 3, 64, 32)
    maps = [build_model(config(backbone=backbone, stride=s)).eval().backbone(x).shape for s in (2, 1)]
    assert maps[1][2] > maps[0][2] and maps[1][3] > maps[0][3]


def test_no_last_stride_switch_is_a_clear_error():
    assert BACKBONES["swin_t"].last_stride_1 is None
    with pytest.raises(UserError, match="--stride 1: swin_t has no last-stride switch"):
        config(backbone="swin_t", stride=1)
    with pytest.raises(UserError, match="no last-stride switch"):
        config(backbone="timm:resnet10t", stride=1)


def test_default_input_size_comes_from_the_table():
    assert (
        config(backbone="swin_base_patch4_window7_224").height,
        config(backbone="swin_base_patch4_window7_224").width,
    ) == (224, 224)
    assert (
        config(backbone="swinv2_base_window8_256").height,
        config(backbone="swinv2_base_window8_256").width,
    ) == (256, 128)
    assert (config(backbone="timm:resnet10t").height, config(backbone="timm:resnet10t").width) == (256, 128)


def test_any_timm_model_by_name():
    net = build_model(config(backbone="timm:vit_tiny_patch16_224", height=64, width=32)).eval()
    x = torch.randn(2, 3, 64, 32)
    assert net.feature_map(x).shape == (2, 192, 4, 2)  # class token dropped, tokens on the 16x16 patch grid
    assert net.pooled(x).shape == (2, 192) and net.embed(x).shape == (2, 512)
    with pytest.raises(UserError, match="timm has no such model"):
        config(backbone="timm:no_such_net")


def test_bnneck_retrieval_is_after_the_bn_metric_feature_before():
    net = build_model(config(neck="bnneck", height=64, width=32)).train()
    assert isinstance(net.classifier, BNNeck) and net.classifier.classifier.bias is None
    assert not net.classifier.bn.bias.requires_grad and torch.all(net.classifier.bn.bias == 0)
    assert net.feature_dim == BACKBONES["resnet18"].feature_dim  # no bottleneck Linear by default
    x = torch.randn(4, 3, 64, 32)
    for _ in range(3):  # move the BN's running statistics away from 0 and 1
        net(x)
    net.eval()
    pooled = net.pooled(x)
    _, feature = net(x)
    assert torch.allclose(feature, pooled)  # metric losses: the pre-BN feature
    assert torch.allclose(net.embed(x), net.classifier.bn(pooled))  # retrieval: the post-BN feature
    assert not torch.allclose(net.embed(x), pooled, atol=1e-3)
    cfg = config(neck="bnneck", linear_num=64)
    assert (cfg.droprate, cfg.linear_num) == (0.0, 64) and build_model(cfg).feature_dim == 64


def test_pooling():
    x = torch.rand(2, 8, 4, 2) + 0.1
    gem = GeM()
    assert gem.p.item() == 3 and gem.p.requires_grad
    expected = x.pow(3).mean(dim=(2, 3), keepdim=True).pow(1 / 3)
    assert torch.allclose(gem(x), expected)
    gem.p.data.fill_(1.0)
    assert torch.allclose(gem(x), x.mean(dim=(2, 3), keepdim=True))  # p = 1: average pooling
    net = build_model(config(pool="max")).eval()
    y = torch.randn(2, 3, 64, 32)
    assert torch.equal(net.pooled(y), net.backbone(y).amax(dim=(2, 3)))
    assert isinstance(build_model(config(pool="gem")).pool, GeM)


def test_osnet_size_and_cost_are_the_papers():
    net = OSNet(1.0)
    trunk = build_model(ModelConfig(nclasses=5, backbone="osnet_x1_0")).backbone
    params = sum(p.numel() for p in trunk.parameters())
    assert 1.8e6 < params + 512 * 512 < 2.4e6  # with the paper's 512-d fc layer: about 2.2M
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        net.features(torch.randn(1, 3, 256, 128))
    assert 0.8e9 < counter.get_total_flops() / 2 < 1.2e9  # multiply-adds: about 1 GFLOP
    for width, channels in [(0.75, 384), (0.5, 256), (0.25, 128)]:
        assert OSNet(width).features(torch.randn(1, 3, 64, 32)).shape == (1, channels, 4, 2)


def test_resnet50_ibn_a_has_instance_norm_on_half_the_channels_of_layer1_to_3():
    trunk = build_model(ModelConfig(nclasses=5, backbone="resnet50_ibn_a")).backbone
    layer1, layer4 = trunk[4], trunk[7]
    ibn = layer1[0].bn1
    assert (ibn.IN.num_features, ibn.BN.num_features) == (32, 32)
    assert all(type(block.bn1).__name__ == "IBN" for layer in trunk[4:7] for block in layer)
    assert isinstance(layer4[0].bn1, torch.nn.BatchNorm2d)
    x = torch.randn(2, 64, 8, 4)
    out = ibn.eval()(x)
    assert torch.allclose(out[:, :32], ibn.IN(x[:, :32])) and torch.allclose(out[:, 32:], ibn.BN(x[:, 32:]))


def test_timm_pretrained_path_and_offline_error(tmp_path, monkeypatch):
    import timm

    reference = timm.create_model("vit_tiny_patch16_224")  # with its ImageNet head, timm's layout
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    net = build_model(
        config(backbone="timm:vit_tiny_patch16_224", height=64, width=32), True, str(tmp_path / "vit.pth")
    )
    assert torch.equal(net.backbone.net.blocks[0].mlp.fc1.weight, reference.blocks[0].mlp.fc1.weight)
    assert net.backbone.net.pos_embed.shape[1] == 1 + 4 * 2  # resized to the 64x32 input by timm's filter
    bad = reference.state_dict()
    del bad["blocks.0.mlp.fc1.weight"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="does not fit timm:vit_tiny_patch16_224"):
        build_model(config(backbone="timm:vit_tiny_patch16_224"), True, str(tmp_path / "bad.pth"))
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):  # what the hub raises without network
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", offline)
    with pytest.raises(UserError, match="--no-pretrained.*--pretrained_path"):
        model.load_imagenet_backbone("efficientnet_b4", pretrained=True, pretrained_path=None)


def test_own_networks_weights_routes(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="osnet_x1_0 has no downloadable ImageNet weights.*--no-pretrained"):
        model.load_imagenet_backbone("osnet_x1_0", pretrained=True, pretrained_path=None)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(
        UserError, match="cannot get the ImageNet weights of resnet50_ibn_a.*--pretrained_path"
    ):
        model.load_imagenet_backbone("resnet50_ibn_a", pretrained=True, pretrained_path=None)
    # The authors' file layout: torchvision's names, IBN's IN/BN, no num_batches_tracked counters.
    state = {
        k: v for k, v in model.resnet50_ibn_a().state_dict().items() if not k.endswith("num_batches_tracked")
    }
    torch.save(state, tmp_path / "ibn.pth")
    net = model.load_imagenet_backbone("resnet50_ibn_a", True, str(tmp_path / "ibn.pth"))
    assert torch.equal(net.layer1[0].bn1.IN.weight, state["layer1.0.bn1.IN.weight"])


def test_pcb_parts():
    net = build_model(ModelConfig(nclasses=5, PCB=True)).eval()
    assert isinstance(net, PCB)
    logits, _ = net(torch.randn(2, 3, 96, 48))
    assert len(logits) == 6 and all(p.shape == (2, 5) for p in logits)
    assert net.embed(torch.randn(2, 3, 96, 48)).shape == (2, 6, 2048)
    logits, feature = net(torch.randn(2, 3, 96, 48))
    assert feature.shape == (2, 6 * 2048) and net.feature_dim == 6 * 2048
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
    with pytest.raises(UserError, match="--PCB is ResNet-50"):
        config(PCB=True)
    with pytest.raises(UserError, match="--PCB is ResNet-50"):
        ModelConfig(nclasses=3, PCB=True, neck="bnneck")


def test_config_defaults_and_input_size():
    assert (ModelConfig(nclasses=3).height, ModelConfig(nclasses=3).width) == (256, 128)
    pcb = ModelConfig(nclasses=3, PCB=True)
    assert (pcb.height, pcb.width, pcb.stride, pcb.droprate) == (384, 192, 2, 0.5)
    assert ModelConfig.from_dict(pcb.to_dict(), "here") == pcb
    assert (ModelConfig(nclasses=3).linear_num, ModelConfig(nclasses=3).droprate) == (512, 0.5)


def test_config_from_before_the_neck_and_pool_fields_loads_as_the_classic_network():
    old = config().to_dict()
    del old["neck"], old["pool"]
    loaded = ModelConfig.from_dict(old, "old opts.yaml")
    assert (loaded.neck, loaded.pool) == ("classblock", "avg")
    flat = {k: v for k, v in old.items()}  # an opts.yaml from before the `model` key
    assert model.model_config(flat, "older opts.yaml") == loaded


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
    (tmp_path / "net_average.pth").touch()
    assert checkpoint_path(tmp_path, "9").name == "net_009.pth"
    assert checkpoint_path(tmp_path, "last").name == "net_last.pth"
    assert checkpoint_path(tmp_path, "average").name == "net_average.pth"
    with pytest.raises(UserError, match="one of: 009, average, last"):
        checkpoint_path(tmp_path, "59")
    with pytest.raises(
        UserError, match="--which_epoch .best. is not an epoch number, last or average; .*009, average, last"
    ):
        checkpoint_path(tmp_path, "best")

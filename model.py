"""The re-ID networks: a backbone, global pooling and a head (the classic bottleneck or BNNeck).

- `BACKBONES`: the backbone table, one named row per network (library and name, feature size, default
  input size, how to cut the trunk and make its last stride 1). Feature sizes and input sizes are
  looked up here, never repeated elsewhere. `timm:NAME` names any other timm model.
- `ModelConfig`: everything that defines a network's architecture, every default written once. train.py
  saves it under `model:` in opts.yaml; test.py and demo.py rebuild the network from it.
- Heads: `ClassBlock`, the bottleneck of the classic baseline (Linear -> BN -> Dropout -> Linear), and
  `BNNeck` (BN -> bias-free Linear, Luo et al. 2019). Pooling: average, max or `GeM`.
- `ReIDNet`: a backbone of the table + pooling + one head. `PCB`: ResNet-50 with six horizontal parts.
- Backbones written here: `resnet50_ibn` (IBN-Net-a), `OSNet` (omni-scale network, widths x1.0 to x0.25).
- `build_model(config)`: the only factory; `load_trained_model(run_dir, which_epoch)` rebuilds a
  trained network from its opts.yaml and loads a checkpoint strictly.

Every network has three functions, so nothing strips layers at test time:
- `forward(x)` -> `(logits, feature)`, what training needs: class logits (B, nclasses) (PCB: a list of
  six) and the feature the metric losses of losses.py see (B, feature_dim);
- `embed(x)`: the retrieval feature, which features.py turns into the features the evaluation ranks
  (flip, scales, L2 normalisation);
- `feature_map(x)`: the last convolutional stage (B, C, h, w), for heatmaps.
"""

import argparse
import dataclasses
import pickle
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision
import yaml
from torch import nn

from utils import UserError, fraction, load_yaml, positive_int

# ----------------------------------------------------------------------------------------------------
# Backbones written here: ResNet-50-IBN-a and OSNet.


class IBN(nn.Module):
    """Instance-Batch Normalization: InstanceNorm on the first half of the channels, BatchNorm on the rest.

    Pan et al., "Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net", ECCV 2018.
    The names `IN` and `BN` are those of the authors' code, so their ImageNet weights load as they are.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.half = channels // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(first.contiguous()), self.BN(second.contiguous())], dim=1)


def resnet50_ibn_a(weights=None) -> nn.Module:
    """torchvision's ResNet-50 made IBN-Net-a: the first norm of every bottleneck of layer1 to layer3
    becomes an IBN layer (layer4 keeps BatchNorm, as the paper's IBN-a). Random weights."""
    net = torchvision.models.resnet50(weights=None)
    for layer in (net.layer1, net.layer2, net.layer3):
        for block in layer:
            block.bn1 = IBN(block.bn1.num_features)
    return net


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, relu=True):
        layers = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        super().__init__(*layers, *([nn.ReLU(inplace=True)] if relu else []))


class LiteConv3x3(nn.Sequential):
    """The paper's Lite 3x3 layer: a linear 1x1 convolution, then a depthwise 3x3 one, BN and ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class AggregationGate(nn.Module):
    """Channel-wise weights of one stream: global average pooling, a 2-layer MLP (hidden size C/16, ReLU)
    and a sigmoid. One gate is shared by all the streams of a block."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mlp(x.mean(dim=(2, 3), keepdim=True))


class OSBlock(nn.Module):
    """Omni-scale residual bottleneck: 1x1 reduction to C/4, four streams of 1 to 4 Lite 3x3 layers
    (receptive fields 3x3 to 9x9) fused by the unified aggregation gate, 1x1 expansion, residual."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 4
        self.reduce = ConvBNReLU(cin, mid)
        self.streams = nn.ModuleList(
            nn.Sequential(*[LiteConv3x3(mid, mid) for _ in range(t)]) for t in range(1, 5)
        )
        self.gate = AggregationGate(mid)
        self.expand = ConvBNReLU(mid, cout, relu=False)
        self.shortcut = nn.Identity() if cin == cout else ConvBNReLU(cin, cout, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        fused = sum(self.gate(stream(reduced)) for stream in self.streams)
        return torch.relu(self.expand(fused) + self.shortcut(x))


class OSNet(nn.Module):
    """Omni-Scale Network (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification",
    ICCV 2019), written from the paper's Table 1: conv1 (7x7, stride 2) and a 3x3 max pool, then
    conv2..conv4 of two OSBlocks each, with a transition (1x1 conv + 2x2 average pool) after conv2 and
    conv3, and conv5 (1x1). Channels 64, 256, 384, 512 times `width` (x1.0, x0.75, x0.5, x0.25). The
    paper's 512-d fc layer and classifier are the re-ID head here. x1.0: about 2.2M parameters with that
    fc layer, about 1 GFLOP (multiply-adds) at 256x128.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        c = [int(64 * width), int(256 * width), int(384 * width), int(512 * width)]
        self.conv1 = ConvBNReLU(3, c[0], kernel=7, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Sequential(OSBlock(c[0], c[1]), OSBlock(c[1], c[1]), self._transition(c[1]))
        self.conv3 = nn.Sequential(OSBlock(c[1], c[2]), OSBlock(c[2], c[2]), self._transition(c[2]))
        self.conv4 = nn.Sequential(OSBlock(c[2], c[3]), OSBlock(c[3], c[3]))
        self.conv5 = ConvBNReLU(c[3], c[3])
        self.classifier = nn.Linear(c[3], num_classes)  # ImageNet-style head, not used by the re-ID trunk
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _transition(channels: int) -> nn.Sequential:
        return nn.Sequential(ConvBNReLU(channels, channels), nn.AvgPool2d(2, stride=2))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 512 * width, H/16, W/16)."""
        return self.conv5(self.conv4(self.conv3(self.conv2(self.maxpool(self.conv1(x))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def _osnet(width: float) -> Callable[..., nn.Module]:
    def build(weights=None) -> nn.Module:
        return OSNet(width)

    return build


# ----------------------------------------------------------------------------------------------------
# The backbone table.


def _resnet_trunk(net: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )


def _stride_1(block: nn.Module) -> None:
    """Make every stride-2 convolution of `block` stride 1: the last down-sampling of a network happens
    in one block (in its main path and its shortcut). Stride 1 doubles the final feature map, which
    helps re-ID (Luo et al., 2019)."""
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)


def _densenet_trunk(net: nn.Module) -> nn.Sequential:
    return nn.Sequential(net.features, nn.ReLU(inplace=True))


def _densenet_last_stride_1(net: nn.Module) -> None:
    # The last transition halves the resolution with a 2x2 average pool: drop it.
    net.features.transition3.pool = nn.Identity()


def _osnet_last_stride_1(net: nn.Module) -> None:
    net.conv3[2][1] = nn.Identity()  # the average pool of the transition after conv3


class _OSNetTrunk(nn.Module):
    def __init__(self, net: OSNet):
        super().__init__()
        self.conv1, self.maxpool, self.conv2, self.conv3, self.conv4, self.conv5 = (
            net.conv1, net.maxpool, net.conv2, net.conv3, net.conv4, net.conv5
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv5(self.conv4(self.conv3(self.conv2(self.maxpool(self.conv1(x))))))


class TimmTrunk(nn.Module):
    """A timm model's `forward_features` as a feature map (B, C, h, w): channels-last maps (Swin) are
    permuted, token sequences (ViT) lose their class and register tokens and are laid out on the patch
    grid."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net.forward_features(x)
        if y.dim() == 3:  # (B, prefix tokens + h * w, C)
            h, w = self.net.patch_embed.dynamic_feat_size(x.shape[2:])
            return y[:, self.net.num_prefix_tokens :].transpose(1, 2).reshape(len(x), -1, h, w)
        if getattr(self.net, "output_fmt", "NCHW") == "NHWC":
            return y.permute(0, 3, 1, 2)
        return y


class Backbone(NamedTuple):
    library: str  # where the classification network comes from: "torchvision", "timm" or "model.py"
    arch: str  # its name there (for model.py, a function of this module)
    feature_dim: int  # channels of the last feature map, the pooled feature's size
    input_size: tuple[int, int]  # default (height, width)
    trunk: Callable[[nn.Module], nn.Module]  # the classification network -> its trunk, (B, C, h, w)
    last_stride_1: Callable[[nn.Module], None] | None  # makes the last down-sampling stride 1; None: none


def _tv(arch, dim, trunk=_resnet_trunk, stride=lambda net: _stride_1(net.layer4[0])) -> Backbone:
    return Backbone("torchvision", arch, dim, (256, 128), trunk, stride)


def _features(net: nn.Module) -> nn.Module:
    return net.features


def _own(arch, dim, trunk, stride) -> Backbone:
    return Backbone("model.py", arch, dim, (256, 128), trunk, stride)


def _timm(arch: str, dim: int, input_size=(256, 128)) -> Backbone:
    return Backbone("timm", arch, dim, input_size, TimmTrunk, None)


# IBN-Net's released ImageNet weights, in the layout of resnet50_ibn_a (IN/BN names).
IBN_WEIGHTS_URL = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"

BACKBONES = {
    # torchvision
    "resnet50": _tv("resnet50", 2048),
    "resnet18": _tv("resnet18", 512),
    "resnet34": _tv("resnet34", 512),
    "resnet101": _tv("resnet101", 2048),
    "resnext50_32x4d": _tv("resnext50_32x4d", 2048),
    "densenet121": _tv("densenet121", 1024, _densenet_trunk, _densenet_last_stride_1),
    "mobilenet_v2": _tv("mobilenet_v2", 1280, _features, lambda net: _stride_1(net.features[14])),
    "mobilenet_v3_large": _tv("mobilenet_v3_large", 960, _features, lambda net: _stride_1(net.features[13])),
    "efficientnet_b0": _tv("efficientnet_b0", 1280, _features, lambda net: _stride_1(net.features[6][0])),
    "regnet_y_1_6gf": _tv(
        "regnet_y_1_6gf",
        888,
        lambda net: nn.Sequential(net.stem, net.trunk_output),
        lambda net: _stride_1(net.trunk_output.block4[0]),
    ),
    "convnext_tiny": _tv("convnext_tiny", 768, _features, None),
    "swin_t": _tv("swin_t", 768, lambda net: nn.Sequential(net.features, net.norm, net.permute), None),
    # written here
    "resnet50_ibn_a": _own("resnet50_ibn_a", 2048, _resnet_trunk, lambda net: _stride_1(net.layer4[0])),
    "osnet_x1_0": _own("osnet_x1_0", 512, _OSNetTrunk, _osnet_last_stride_1),
    "osnet_x0_75": _own("osnet_x0_75", 384, _OSNetTrunk, _osnet_last_stride_1),
    "osnet_x0_5": _own("osnet_x0_5", 256, _OSNetTrunk, _osnet_last_stride_1),
    "osnet_x0_25": _own("osnet_x0_25", 128, _OSNetTrunk, _osnet_last_stride_1),
    # timm: the networks of the classic toolkit's flags (its timm names and input sizes)
    "swin_base_patch4_window7_224": _timm("swin_base_patch4_window7_224", 1024, (224, 224)),
    "swinv2_base_window8_256": _timm("swinv2_base_window8_256", 1024),
    "convnext_base": _timm("convnext_base", 1024),
    "efficientnet_b4": _timm("efficientnet_b4", 1792),
    "hrnet_w18": _timm("hrnet_w18", 2048),
    "vit_base_patch16_dinov3": _timm("vit_base_patch16_dinov3", 768),
}
# The networks written in this module, by their `arch`.
OWN_NETWORKS = {
    "resnet50_ibn_a": resnet50_ibn_a,
    "osnet_x1_0": _osnet(1.0),
    "osnet_x0_75": _osnet(0.75),
    "osnet_x0_5": _osnet(0.5),
    "osnet_x0_25": _osnet(0.25),
}
# Where the ImageNet weights of the networks written here are downloaded from (OSNet's: nowhere).
OWN_WEIGHTS = {"resnet50_ibn_a": IBN_WEIGHTS_URL}
# The classic toolkit's backbone flags, each an alias of --backbone.
CLASSIC_BACKBONE_FLAGS = {
    "--use_dense": "densenet121",
    "--use_swin": "swin_base_patch4_window7_224",
    "--use_swinv2": "swinv2_base_window8_256",
    "--use_convnext": "convnext_base",
    "--use_efficient": "efficientnet_b4",
    "--use_hr": "hrnet_w18",
    "--use_dino": "vit_base_patch16_dinov3",
    "--ibn": "resnet50_ibn_a",
}
TIMM_PREFIX = "timm:"


def backbone_row(backbone: str) -> Backbone:
    """The table's row of `backbone`; for `timm:NAME`, a row built from timm's model (no last-stride
    switch, input 256x128, the feature size timm reports)."""
    if backbone in BACKBONES:
        return BACKBONES[backbone]
    name = backbone.removeprefix(TIMM_PREFIX)
    return Backbone("timm", name, 0, (256, 128), TimmTrunk, None)  # feature_dim: read from the model


def check_backbone(backbone: str) -> None:
    """A UserError unless `backbone` is a name of the table or `timm:NAME` with a model timm knows."""
    if backbone in BACKBONES:
        return
    if backbone.startswith(TIMM_PREFIX):
        import timm

        if timm.is_model(backbone.removeprefix(TIMM_PREFIX)):
            return
        raise UserError(
            f'--backbone {backbone}: timm has no such model; `python -c "import timm; '
            f"print(timm.list_models('*swin*'))\"` lists its names"
        )
    raise UserError(
        f"unknown backbone {backbone!r}: choose one of {', '.join(BACKBONES)}, or timm:NAME for a timm model"
    )


def _offline(backbone: str, err: Exception) -> UserError:
    return UserError(
        f"cannot get the ImageNet weights of {backbone} ({type(err).__name__}: offline?): "
        "train from scratch with --no-pretrained, or give a local file with --pretrained_path FILE"
    )


def _load_weights(net: nn.Module, trunk: nn.Module, state: dict, backbone: str, where: str) -> None:
    """Load an ImageNet state_dict into `net`: only weights the re-ID trunk does not use (the ImageNet
    classifier) and BatchNorm's num_batches_tracked counters may be missing; nothing may be unexpected."""
    used = {id(t) for t in trunk.state_dict(keep_vars=True).values()}
    tensors = net.state_dict(keep_vars=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    wrong = [k for k in missing if id(tensors[k]) in used and not k.endswith("num_batches_tracked")]
    wrong += list(unexpected)
    if wrong:
        raise UserError(
            f"{where} does not fit {backbone}: {len(wrong)} keys missing or unexpected, e.g. {', '.join(wrong[:3])}"
        )


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"--pretrained_path {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise UserError(f"--pretrained_path {path}: cannot read it as a state_dict ({err})") from None


def _timm_network(row: Backbone, backbone: str, input_size, pretrained: bool, pretrained_path) -> nn.Module:
    """A timm model without its classifier, for `input_size` where its architecture depends on it
    (Swin, ViT); ImageNet weights from the hub, or from a local file through timm's checkpoint filter
    (which resizes position embeddings and window tables to the input size)."""
    import timm

    kwargs = {"pretrained": pretrained, "num_classes": 0, "global_pool": ""}
    if pretrained_path:
        state = _read_state_dict(Path(pretrained_path))  # the same one-line errors as for the others
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_path)}
    try:
        try:
            net = timm.create_model(row.arch, img_size=tuple(input_size), **kwargs)
        except TypeError:  # a network whose layers do not depend on the input size (a CNN)
            net = timm.create_model(row.arch, **kwargs)
    except RuntimeError as err:
        if pretrained_path:
            raise UserError(f"--pretrained_path {pretrained_path} does not fit {backbone}: {err}") from None
        raise _offline(backbone, err) from None
    except (urllib.error.URLError, OSError) as err:
        raise _offline(backbone, err) from None
    if pretrained_path:  # timm loads a file leniently (a missing weight stays random): check it
        missing = [k for k in net.state_dict() if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise UserError(
                f"--pretrained_path {pretrained_path} does not fit {backbone}: {len(missing)} keys missing, "
                f"e.g. {', '.join(missing[:3])}"
            )
    if isinstance(getattr(net, "head", None), nn.Module):
        net.head = nn.Identity()  # forward_features never uses it (e.g. ConvNeXt's head norm)
    return net


def load_imagenet_backbone(
    backbone: str, pretrained: bool, pretrained_path: str | None, input_size: tuple[int, int] | None = None
) -> nn.Module:
    """Build the classification network of `backbone`, with ImageNet weights when asked.

    Three routes to the weights: `pretrained_path`, a local state_dict in the library's layout (only
    weights the re-ID trunk does not use, such as the ImageNet classifier, may be missing from it);
    otherwise, when `pretrained`, the library's download (torchvision's weights API, timm's hub, or
    for ResNet-50-IBN-a the authors' release), cached after the first time; else random weights.
    `input_size` (height, width) matters only for timm transformers (default: the row's).
    """
    row = backbone_row(backbone)
    input_size = input_size or row.input_size
    if row.library == "timm":
        return _timm_network(row, backbone, input_size, pretrained, pretrained_path)
    if row.library == "torchvision":
        constructor = getattr(torchvision.models, row.arch)
    else:
        constructor = OWN_NETWORKS[row.arch]
    net = constructor(weights=None)
    if pretrained_path:
        path = Path(pretrained_path)
        _load_weights(net, row.trunk(net), _read_state_dict(path), backbone, f"--pretrained_path {path}")
    elif pretrained:
        try:
            if row.library == "torchvision":
                return constructor(weights="DEFAULT")
            if row.arch not in OWN_WEIGHTS:
                raise UserError(
                    f"{backbone} has no downloadable ImageNet weights: train it from scratch with "
                    "--no-pretrained, or give its weights with --pretrained_path FILE"
                )
            state = torch.hub.load_state_dict_from_url(OWN_WEIGHTS[row.arch], map_location="cpu")
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            raise _offline(backbone, err) from None
        _load_weights(net, row.trunk(net), state, backbone, OWN_WEIGHTS[row.arch])
    return net


# ----------------------------------------------------------------------------------------------------
# The model configuration.

NECKS = ("classblock", "bnneck")
# Fields added to ModelConfig after opts.yaml had a `model` key, with the value every model trained
# before had: an older opts.yaml without them still loads, as the architecture it describes.
ADDED_FIELDS = {"neck": "classblock", "pool": "avg"}
POOLS = ("avg", "max", "gem")


@dataclasses.dataclass
class ModelConfig:
    """What defines a network's architecture: the one place that holds every model default.

    Saved by train.py under the key `model` of opts.yaml and read back strictly by `from_dict`.
    None means a default that depends on other fields, filled in at construction:
    - height, width: the input size, the backbone's (256x128 for most; PCB: 384x192);
    - linear_num: the head's bottleneck Linear, 512 for the classic ClassBlock, none (0) for BNNeck;
    - droprate: dropout before the classifier, 0.5 for ClassBlock, 0 for BNNeck.
    """

    nclasses: int  # identities of the training split
    backbone: str = "resnet50"
    PCB: bool = False
    stride: int = 2  # of the last stage; 1 doubles the final feature map
    droprate: float | None = None
    linear_num: int | None = None  # bottleneck size; <= 0: no bottleneck Linear
    height: int | None = None
    width: int | None = None
    neck: str = "classblock"  # the head: the classic ClassBlock, or BNNeck
    pool: str = "avg"  # global pooling: average, max, or GeM

    def __post_init__(self):
        check_backbone(self.backbone)
        row = backbone_row(self.backbone)
        if self.neck not in NECKS:
            raise UserError(f"unknown neck {self.neck!r}: choose one of {', '.join(NECKS)}")
        if self.pool not in POOLS:
            raise UserError(f"unknown pool {self.pool!r}: choose one of {', '.join(POOLS)}")
        if self.PCB and (self.backbone != "resnet50" or self.neck != "classblock" or self.pool != "avg"):
            raise UserError(
                "--PCB is ResNet-50 with its own part pooling and heads: drop --backbone/--neck/--pool"
            )
        if self.stride == 1 and row.last_stride_1 is None and not self.PCB:
            raise UserError(f"--stride 1: {self.backbone} has no last-stride switch; drop --stride 1")
        bnneck = self.neck == "bnneck"
        if self.linear_num is None:
            self.linear_num = 0 if bnneck else 512
        if self.droprate is None:
            self.droprate = 0.0 if bnneck else 0.5
        default_size = (384, 192) if self.PCB else row.input_size
        if self.height is None:
            self.height = default_size[0]
        if self.width is None:
            self.width = default_size[1]

    @classmethod
    def from_dict(cls, values: dict, where: str) -> "ModelConfig":
        """The configuration saved in `values`; a missing or unknown key is a UserError naming it (keys
        added to the format later, ADDED_FIELDS, take the value models had before they existed)."""
        if not isinstance(values, dict):
            raise UserError(f"{where}: the model configuration must be a mapping, found {values!r}")
        values = {**ADDED_FIELDS, **values}
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        missing = [name for name in names if name not in values]
        if unknown or missing:
            problem = f"unknown key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}"
            raise UserError(f"{where}: {problem} in the model configuration; train the model again")
        return cls(**values)

    @classmethod
    def from_options(cls, options: dict, where: str = "the options") -> "ModelConfig":
        """The configuration of a script's options (train.py's, or a flat opts.yaml), which name the
        fields as ModelConfig does; fields they lack are missing keys (see from_dict)."""
        names = [field.name for field in dataclasses.fields(cls)]
        return cls.from_dict({name: options[name] for name in names if name in options}, where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The architecture options of train.py, with ModelConfig's defaults (and the classic aliases)."""
    default = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
    group = parser.add_argument_group("model")
    group.add_argument(
        "--backbone",
        default=default["backbone"],
        metavar="NAME",
        help=f"network: one of {', '.join(BACKBONES)}, or timm:NAME for any timm model",
    )
    for flag, backbone in CLASSIC_BACKBONE_FLAGS.items():
        group.add_argument(
            flag, dest="backbone", action="store_const", const=backbone, help=f"= --backbone {backbone}"
        )
    group.add_argument("--PCB", action="store_true", help="Part-based Convolutional Baseline (ResNet-50)")
    group.add_argument(
        "--stride", type=int, default=default["stride"], choices=[1, 2], help="stride of the last stage"
    )
    group.add_argument(
        "--neck", default=default["neck"], choices=NECKS, help="head: the classic bottleneck or BNNeck"
    )
    group.add_argument(
        "--pool", default=default["pool"], choices=POOLS, help="global pooling (gem: GeM, p learned)"
    )
    group.add_argument(
        "--droprate",
        type=fraction,
        default=None,
        help="dropout before the classifier, 0 to <1 (None: 0.5; bnneck 0)",
    )
    group.add_argument(
        "--linear_num", type=int, default=None, help="bottleneck size, <= 0: none (None: 512; bnneck 0)"
    )
    group.add_argument(
        "--height",
        type=positive_int,
        default=None,
        help="input height (None: the backbone's, e.g. 256; PCB 384)",
    )
    group.add_argument(
        "--width",
        type=positive_int,
        default=None,
        help="input width (None: the backbone's, e.g. 128; PCB 192)",
    )


# ----------------------------------------------------------------------------------------------------
# The networks.


class GeM(nn.Module):
    """Generalized-mean pooling with a learned exponent p, initially 3 (Radenovic et al., "Fine-tuning
    CNN Image Retrieval with No Human Annotation", TPAMI 2019), as fast-reid's GeneralizedMeanPoolingP:
    (mean of x^p)^(1/p) over the map, x clamped at 1e-6; p = 1 is average pooling, p -> inf max pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), p))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, 1, 1)."""
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3), keepdim=True).pow(1.0 / self.p)


def make_pool(pool: str) -> nn.Module:
    return {"avg": nn.AdaptiveAvgPool2d(1), "max": nn.AdaptiveMaxPool2d(1), "gem": GeM()}[pool]


class ClassBlock(nn.Module):
    """Bottleneck classifier head: Linear(in -> linear_num) -> BN -> [LeakyReLU] -> Dropout -> Linear.

    The BN output is the retrieval embedding and the metric-loss feature. linear_num <= 0 drops the
    first Linear (the embedding is then the BN of the input). Init as in the classic baseline: Kaiming
    for the bottleneck, a small normal for the classifier.
    """

    def __init__(self, input_dim: int, num_classes: int, droprate: float, linear_num: int, relu=False):
        super().__init__()
        layers = []
        if linear_num > 0:
            layers.append(nn.Linear(input_dim, linear_num))
        else:
            linear_num = input_dim
        layers.append(nn.BatchNorm1d(linear_num))
        self.bottleneck = nn.Sequential(*layers)
        head = [nn.LeakyReLU(0.1)] if relu else []
        if droprate > 0:
            head.append(nn.Dropout(p=droprate))
        head.append(nn.Linear(linear_num, num_classes))
        self.classifier = nn.Sequential(*head)
        self.embedding_dim = self.feature_dim = linear_num

        for m in self.bottleneck.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier[-1].weight, std=0.001)
        nn.init.zeros_(self.classifier[-1].bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, input_dim) -> logits (B, num_classes), metric feature = embedding (B, embedding_dim)."""
        f = self.bottleneck(x)
        return self.classifier(f), f

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_dim) -> embedding (B, embedding_dim)."""
        return self.bottleneck(x)


class BNNeck(nn.Module):
    """BNNeck head (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person Re-identification",
    CVPR-W 2019): [Linear(in -> linear_num)] -> BatchNorm1d with its bias frozen at 0 -> [Dropout] ->
    bias-free Linear classifier. The metric losses see the feature before the BN, the classifier and
    retrieval the feature after it, so the two objectives act on different spaces.
    """

    def __init__(self, input_dim: int, num_classes: int, droprate: float, linear_num: int):
        super().__init__()
        self.reduce = nn.Linear(input_dim, linear_num, bias=False) if linear_num > 0 else nn.Identity()
        dim = linear_num if linear_num > 0 else input_dim
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)  # no shift: the feature stays centred for the cosine distance
        self.dropout = nn.Dropout(droprate) if droprate > 0 else nn.Identity()
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        self.embedding_dim = self.feature_dim = dim
        nn.init.normal_(self.classifier.weight, std=0.001)
        if linear_num > 0:
            nn.init.kaiming_normal_(self.reduce.weight, a=0, mode="fan_out")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, input_dim) -> logits (B, num_classes), metric feature before the BN (B, embedding_dim)."""
        f = self.reduce(x)
        return self.classifier(self.dropout(self.bn(f))), f

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_dim) -> retrieval feature after the BN (B, embedding_dim)."""
        return self.bn(self.reduce(x))


class ReIDNet(nn.Module):
    """Backbone + global pooling + a head: the classic identity-classification baseline (Zheng et al.,
    "A Discriminatively Learned CNN Embedding for Person Re-identification", 2017) with ClassBlock, or
    the bag-of-tricks baseline (Luo et al., 2019) with BNNeck."""

    def __init__(self, backbone_net: nn.Module, config: ModelConfig):
        super().__init__()
        row = backbone_row(config.backbone)
        if config.stride == 1:
            row.last_stride_1(backbone_net)
        self.backbone = row.trunk(backbone_net)
        feature_dim = row.feature_dim or backbone_net.num_features  # timm:NAME reports its own
        self.pool = make_pool(config.pool)
        head = BNNeck if config.neck == "bnneck" else ClassBlock
        self.classifier = head(feature_dim, config.nclasses, config.droprate, config.linear_num)
        self.feature_dim = self.classifier.feature_dim

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the last convolutional stage (B, C, h, w)."""
        return self.backbone(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pooled backbone feature (B, C)."""
        return self.pool(self.backbone(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> logits (B, nclasses), metric-loss feature (B, feature_dim)."""
        return self.classifier(self.pooled(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> retrieval feature (B, embedding_dim): the head's BN output."""
        return self.classifier.embed(self.pooled(x))


class PCB(nn.Module):
    """Part-based Convolutional Baseline (Sun et al., "Beyond Part Models: Person Retrieval with
    Refined Part Pooling", ECCV 2018).

    ResNet-50 with last stride 1; the feature map is average-pooled into `parts` horizontal stripes,
    each classified by its own ClassBlock with a `part_dim` bottleneck; the training loss is summed
    over the parts. The embedding is the pooled part features (before the bottlenecks), which are also
    the metric-loss feature (concatenated).
    """

    parts = 6
    part_dim = 256

    def __init__(self, backbone_net: nn.Module, config: ModelConfig):
        super().__init__()
        row = BACKBONES[config.backbone]
        row.last_stride_1(backbone_net)
        self.backbone = row.trunk(backbone_net)
        self.pool = nn.AdaptiveAvgPool2d((self.parts, 1))
        self.dropout = nn.Dropout(p=config.droprate)
        self.classifiers = nn.ModuleList(
            ClassBlock(row.feature_dim, config.nclasses, config.droprate, self.part_dim, relu=True)
            for _ in range(self.parts)
        )
        self.feature_dim = self.parts * row.feature_dim

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the last convolutional stage (B, feature_dim, h, w)."""
        return self.backbone(x)

    def part_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, parts, feature_dim)."""
        return self.pool(self.backbone(x)).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Returns one logits tensor (B, num_classes) per part, and the part features (B, parts * 2048)."""
        features = self.part_features(x)
        parts = self.dropout(features)
        return [block(parts[:, i])[0] for i, block in enumerate(self.classifiers)], features.flatten(1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> part features (B, parts, feature_dim); features.py normalises each part."""
        return self.part_features(x)


def build_model(
    config: ModelConfig, pretrained: bool = False, pretrained_path: str | None = None
) -> nn.Module:
    """The network described by `config`, its backbone with ImageNet weights when `pretrained`
    (from `pretrained_path` when given, else the library's download)."""
    net = load_imagenet_backbone(
        config.backbone, pretrained, pretrained_path if pretrained else None, (config.height, config.width)
    )
    return PCB(net, config) if config.PCB else ReIDNet(net, config)


# ----------------------------------------------------------------------------------------------------
# Trained models: opts.yaml and the checkpoints of model/NAME.


def model_config(opts: dict, where: str) -> ModelConfig:
    """The ModelConfig of a run's opts.yaml (`where`): its `model` key, or, in an opts.yaml written
    before that key existed, the same names among the top-level options."""
    if "model" in opts:
        return ModelConfig.from_dict(opts["model"], where)
    return ModelConfig.from_options(opts, where)


def load_opts(path: Path) -> dict:
    """A run's opts.yaml; a file that is not a YAML mapping is a UserError naming it."""
    try:
        opts = load_yaml(path)
    except yaml.YAMLError as err:
        raise UserError(
            f"{path}: not valid YAML ({' '.join(str(err).split())}); undo the edit or train again"
        ) from None
    if not isinstance(opts, dict):
        raise UserError(f"{path}: not a mapping of options; undo the edit or train again")
    return opts


def load_torch_file(path: Path, weights_only: bool = True):
    """torch.load on the CPU (load_state_dict then moves each tensor to its parameter's device); a
    truncated or foreign file is a UserError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: cannot read it ({reason}); the file is damaged") from None


def checkpoint_path(run_dir: Path, which_epoch: str) -> Path:
    """`--which_epoch 59` -> net_059.pth, `last` -> net_last.pth, `average` -> net_average.pth (the
    weight average of train.py --wa); a missing one lists those present."""
    present = sorted(p.stem.removeprefix("net_") for p in Path(run_dir).glob("net_*.pth"))
    choices = f"--which_epoch can be one of: {', '.join(present) or 'none (train first)'}"
    named = {"last": "net_last.pth", "average": "net_average.pth"}
    if which_epoch not in named and not str(which_epoch).isdigit():
        raise UserError(f"--which_epoch {which_epoch!r} is not an epoch number, last or average; {choices}")
    name = named.get(which_epoch) or f"net_{int(which_epoch):03d}.pth"
    path = Path(run_dir) / name
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint; {choices}")
    return path


def load_trained_model(run_dir: str | Path, which_epoch: str = "last") -> tuple[nn.Module, ModelConfig]:
    """Rebuild a trained model from `run_dir/opts.yaml` and load a checkpoint strictly (on the CPU).

    Returns the model in eval mode and its configuration.
    """
    opts_file = Path(run_dir) / "opts.yaml"
    if not opts_file.is_file():
        raise UserError(f"{opts_file}: missing; is --name right? train.py writes it")
    config = model_config(load_opts(opts_file), str(opts_file))
    model = build_model(config)
    checkpoint = checkpoint_path(run_dir, which_epoch)
    try:
        model.load_state_dict(load_torch_file(checkpoint))
    except RuntimeError as err:  # names and sizes that don't fit
        detail = " ".join(str(err).split())[:200]
        raise UserError(
            f"{checkpoint} does not fit the model of {opts_file} ({detail}); was opts.yaml edited?"
        ) from None
    return model.eval(), config

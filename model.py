"""The re-ID networks: a CNN backbone, global pooling and a bottleneck classifier head.

- `BACKBONES`: the backbone table, one named row per network (constructor, feature size, how to cut
  the trunk and make its last stride 1). Feature sizes are looked up here, never repeated elsewhere.
- `ModelConfig`: everything that defines a network's architecture, every default written once. train.py
  saves it under `model:` in opts.yaml; test.py and demo.py rebuild the network from it.
- `ClassBlock`: the bottleneck head of the classic baseline (Linear -> BN -> Dropout -> Linear).
- `ReIDNet`: a backbone of the table + average pooling + one ClassBlock.
- `PCB`: Part-based Convolutional Baseline, ResNet-50 with six horizontal parts.
- `build_model(config)`: the only factory; `load_trained_model(run_dir, which_epoch)` rebuilds a
  trained network from its opts.yaml and loads a checkpoint strictly.

Every network has `forward(x)` (class logits, for training), `embed(x)` (the retrieval feature) and
`feature_map(x)` (the last convolutional stage, for heatmaps), so nothing strips layers at test time.
features.py turns `embed` into the features the evaluation ranks (flip, scales, L2 normalisation).
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
# The backbone table.


def _resnet_trunk(net: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )


def _resnet_last_stride_1(net: nn.Module) -> None:
    # The first block of layer4 halves the resolution: in its 3x3 conv (or first conv) and in its
    # shortcut. Stride 1 doubles the final feature map, which helps re-ID (Luo et al., 2019).
    for module in net.layer4[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)


def _densenet_trunk(net: nn.Module) -> nn.Sequential:
    return nn.Sequential(net.features, nn.ReLU(inplace=True))


def _densenet_last_stride_1(net: nn.Module) -> None:
    # The last transition halves the resolution with a 2x2 average pool: drop it.
    net.features.transition3.pool = nn.Identity()


def _mobilenet_trunk(net: nn.Module) -> nn.Sequential:
    return net.features


def _mobilenet_last_stride_1(net: nn.Module) -> None:
    # features[14] is the last inverted-residual block with stride 2 (its depthwise conv).
    for module in net.features[14].modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)


class Backbone(NamedTuple):
    constructor: Callable[..., nn.Module]  # torchvision's, taking `weights`
    feature_dim: int  # channels of the last feature map, the pooled feature's size
    trunk: Callable[[nn.Module], nn.Module]  # the classification network -> its convolutional trunk
    last_stride_1: Callable[[nn.Module], None]  # makes the trunk's last down-sampling stride 1, in place
    classifier_prefix: str  # the ImageNet classifier's state_dict keys, absent from a features-only file


BACKBONES = {
    "resnet50": Backbone(torchvision.models.resnet50, 2048, _resnet_trunk, _resnet_last_stride_1, "fc."),
    "resnet18": Backbone(torchvision.models.resnet18, 512, _resnet_trunk, _resnet_last_stride_1, "fc."),
    "resnet34": Backbone(torchvision.models.resnet34, 512, _resnet_trunk, _resnet_last_stride_1, "fc."),
    "densenet121": Backbone(
        torchvision.models.densenet121, 1024, _densenet_trunk, _densenet_last_stride_1, "classifier."
    ),
    "mobilenet_v2": Backbone(
        torchvision.models.mobilenet_v2, 1280, _mobilenet_trunk, _mobilenet_last_stride_1, "classifier."
    ),
}


def load_imagenet_backbone(backbone: str, pretrained: bool, pretrained_path: str | None) -> nn.Module:
    """Build a torchvision classification network, with ImageNet weights when asked.

    pretrained_path: a local state_dict in torchvision's layout; only the classifier keys may be
    missing from it. Otherwise, when pretrained, torchvision's weights API (downloads once, then
    uses its cache).
    """
    row = BACKBONES[backbone]
    if pretrained_path:
        net = row.constructor(weights=None)
        path = Path(pretrained_path)
        if not path.is_file():
            raise UserError(f"--pretrained_path {path}: no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
            raise UserError(f"--pretrained_path {path}: cannot read it as a state_dict ({err})") from None
        missing, unexpected = net.load_state_dict(state, strict=False)
        wrong = [k for k in missing if not k.startswith(row.classifier_prefix)] + list(unexpected)
        if wrong:
            raise UserError(
                f"--pretrained_path {path} does not fit torchvision's {backbone}: {len(wrong)} keys "
                f"missing or unexpected, e.g. {', '.join(wrong[:3])}"
            )
        return net
    if not pretrained:
        return row.constructor(weights=None)
    try:
        return row.constructor(weights="DEFAULT")
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise UserError(
            f"cannot get the ImageNet weights of {backbone} ({type(err).__name__}: offline?): "
            "train from scratch with --no-pretrained, or give a local file with --pretrained_path FILE"
        ) from None


# ----------------------------------------------------------------------------------------------------
# The model configuration.


@dataclasses.dataclass
class ModelConfig:
    """What defines a network's architecture: the one place that holds every model default.

    Saved by train.py under the key `model` of opts.yaml and read back strictly by `from_dict`.
    height and width are the input size; None means the default, 256x128 (PCB: 384x192).
    """

    nclasses: int  # identities of the training split
    backbone: str = "resnet50"
    PCB: bool = False
    stride: int = 2  # of the last stage; 1 doubles the final feature map
    droprate: float = 0.5  # dropout before the classifier
    linear_num: int = 512  # bottleneck size; <= 0: no bottleneck Linear
    height: int | None = None
    width: int | None = None

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise UserError(f"unknown backbone {self.backbone!r}: choose one of {', '.join(BACKBONES)}")
        if self.PCB and self.backbone != "resnet50":
            raise UserError("--PCB is built on resnet50; drop --backbone/--use_dense")
        if self.height is None:
            self.height = 384 if self.PCB else 256
        if self.width is None:
            self.width = 192 if self.PCB else 128

    @classmethod
    def from_dict(cls, values: dict, where: str) -> "ModelConfig":
        """The configuration saved in `values`; a missing or unknown key is a UserError naming it."""
        if not isinstance(values, dict):
            raise UserError(f"{where}: the model configuration must be a mapping, found {values!r}")
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
    group.add_argument("--backbone", default=default["backbone"], choices=list(BACKBONES), help="network")
    group.add_argument(
        "--use_dense",
        dest="backbone",
        action="store_const",
        const="densenet121",
        help="= --backbone densenet121",
    )
    group.add_argument("--PCB", action="store_true", help="Part-based Convolutional Baseline (ResNet-50)")
    group.add_argument(
        "--stride", type=int, default=default["stride"], choices=[1, 2], help="stride of the last stage"
    )
    group.add_argument(
        "--droprate",
        type=fraction,
        default=default["droprate"],
        help="dropout before the classifier (0 to <1)",
    )
    group.add_argument(
        "--linear_num", type=int, default=default["linear_num"], help="bottleneck size (<= 0: none)"
    )
    group.add_argument(
        "--height", type=positive_int, default=None, help="input height (default 256; PCB 384)"
    )
    group.add_argument("--width", type=positive_int, default=None, help="input width (default 128; PCB 192)")


# ----------------------------------------------------------------------------------------------------
# The networks.


class ClassBlock(nn.Module):
    """Bottleneck classifier head: Linear(in -> linear_num) -> BN -> [LeakyReLU] -> Dropout -> Linear.

    The BN output is the retrieval embedding. linear_num <= 0 drops the first Linear (the embedding
    is then the BN of the input). Init as in the classic baseline: Kaiming for the bottleneck, a
    small normal for the classifier.
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
        self.embedding_dim = linear_num

        for m in self.bottleneck.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier[-1].weight, std=0.001)
        nn.init.zeros_(self.classifier[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_dim) -> logits (B, num_classes)."""
        return self.classifier(self.bottleneck(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_dim) -> embedding (B, embedding_dim)."""
        return self.bottleneck(x)


class ReIDNet(nn.Module):
    """Backbone + global average pooling + ClassBlock: the classic identity-classification baseline
    (Zheng et al., "A Discriminatively Learned CNN Embedding for Person Re-identification", 2017)."""

    def __init__(self, backbone_net: nn.Module, config: ModelConfig):
        super().__init__()
        row = BACKBONES[config.backbone]
        if config.stride == 1:
            row.last_stride_1(backbone_net)
        self.backbone = row.trunk(backbone_net)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = ClassBlock(row.feature_dim, config.nclasses, config.droprate, config.linear_num)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the last convolutional stage (B, feature_dim, h, w)."""
        return self.backbone(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pooled backbone feature (B, feature_dim)."""
        return self.pool(self.backbone(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> retrieval feature (B, linear_num): the bottleneck BN output."""
        return self.classifier.embed(self.pooled(x))


class PCB(nn.Module):
    """Part-based Convolutional Baseline (Sun et al., "Beyond Part Models: Person Retrieval with
    Refined Part Pooling", ECCV 2018).

    ResNet-50 with last stride 1; the feature map is average-pooled into `parts` horizontal stripes,
    each classified by its own ClassBlock with a `part_dim` bottleneck; the training loss is summed
    over the parts. The embedding is the pooled part features (before the bottlenecks).
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

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the last convolutional stage (B, feature_dim, h, w)."""
        return self.backbone(x)

    def part_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, parts, feature_dim)."""
        return self.pool(self.backbone(x)).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns one logits tensor (B, num_classes) per part."""
        parts = self.dropout(self.part_features(x))
        return [block(parts[:, i]) for i, block in enumerate(self.classifiers)]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> part features (B, parts, feature_dim); features.py normalises each part."""
        return self.part_features(x)


def build_model(
    config: ModelConfig, pretrained: bool = False, pretrained_path: str | None = None
) -> nn.Module:
    """The network described by `config`, its backbone with ImageNet weights when `pretrained`
    (from `pretrained_path` when given, else torchvision's download)."""
    net = load_imagenet_backbone(config.backbone, pretrained, pretrained_path if pretrained else None)
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
    """`--which_epoch 59` -> net_059.pth, `last` -> net_last.pth; a missing one lists those present."""
    present = sorted(p.stem.removeprefix("net_") for p in Path(run_dir).glob("net_*.pth"))
    choices = f"--which_epoch can be one of: {', '.join(present) or 'none (train first)'}"
    if which_epoch != "last" and not which_epoch.isdigit():
        raise UserError(f"--which_epoch {which_epoch!r} is not an epoch number or last; {choices}")
    name = "net_last.pth" if which_epoch == "last" else f"net_{int(which_epoch):03d}.pth"
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

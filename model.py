"""The re-ID networks: a CNN backbone, global pooling and a bottleneck classifier head.

- `ClassBlock`: the bottleneck head of the classic baseline (Linear -> BN -> Dropout -> Linear).
- `ReIDNet`: any backbone of the table `BACKBONES` + average pooling + one ClassBlock.
- `PCB`: Part-based Convolutional Baseline, ResNet-50 with six horizontal parts.
- `build_model(opts)`: the only factory; test.py rebuilds a trained model from its opts.yaml with it.

Every network has `forward(x)` (class logits, for training) and `embed(x)` (the retrieval feature,
for test.py), so nothing strips layers at test time.
"""

import pickle
import urllib.error
from pathlib import Path

import torch
import torchvision
from torch import nn

from utils import UserError, load_yaml


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


# name -> (torchvision constructor, feature size, trunk, make last stride 1, classifier key prefix)
BACKBONES = {
    "resnet50": (torchvision.models.resnet50, 2048, _resnet_trunk, _resnet_last_stride_1, "fc."),
    "resnet18": (torchvision.models.resnet18, 512, _resnet_trunk, _resnet_last_stride_1, "fc."),
    "resnet34": (torchvision.models.resnet34, 512, _resnet_trunk, _resnet_last_stride_1, "fc."),
    "densenet121": (
        torchvision.models.densenet121,
        1024,
        _densenet_trunk,
        _densenet_last_stride_1,
        "classifier.",
    ),
    "mobilenet_v2": (
        torchvision.models.mobilenet_v2,
        1280,
        _mobilenet_trunk,
        _mobilenet_last_stride_1,
        "classifier.",
    ),
}


def load_imagenet_backbone(backbone: str, pretrained: bool, pretrained_path: str | None) -> nn.Module:
    """Build a torchvision classification network, with ImageNet weights when asked.

    pretrained_path: a local state_dict in torchvision's layout; only the classifier keys may be
    missing from it. Otherwise, when pretrained, torchvision's weights API (downloads once, then
    uses its cache).
    """
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}: choose one of {', '.join(BACKBONES)}")
    constructor, _, _, _, classifier_prefix = BACKBONES[backbone]
    if pretrained_path:
        net = constructor(weights=None)
        path = Path(pretrained_path)
        if not path.is_file():
            raise UserError(f"--pretrained_path {path}: no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
            raise UserError(f"--pretrained_path {path}: cannot read it as a state_dict ({err})") from None
        missing, unexpected = net.load_state_dict(state, strict=False)
        wrong = [k for k in missing if not k.startswith(classifier_prefix)] + list(unexpected)
        if wrong:
            raise UserError(
                f"--pretrained_path {path} does not fit torchvision's {backbone}: {len(wrong)} keys "
                f"missing or unexpected, e.g. {', '.join(wrong[:3])}"
            )
        return net
    if not pretrained:
        return constructor(weights=None)
    try:
        return constructor(weights="DEFAULT")
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise UserError(
            f"cannot get the ImageNet weights of {backbone} ({type(err).__name__}: offline?): "
            "train from scratch with --no-pretrained, or give a local file with --pretrained_path FILE"
        ) from None


class ClassBlock(nn.Module):
    """Bottleneck classifier head: Linear(in -> linear_num) -> BN -> [LeakyReLU] -> Dropout -> Linear.

    The BN output is the retrieval embedding. linear_num <= 0 drops the first Linear (the embedding
    is then the BN of the input). Init as in the classic baseline: Kaiming for the bottleneck, a
    small normal for the classifier.
    """

    def __init__(
        self, input_dim: int, num_classes: int, droprate: float = 0.5, linear_num: int = 512, relu=False
    ):
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

    def __init__(
        self, backbone_net: nn.Module, backbone: str, num_classes: int, stride=2, droprate=0.5, linear_num=512
    ):
        super().__init__()
        _, feat_dim, trunk, last_stride_1, _ = BACKBONES[backbone]
        if stride == 1:
            last_stride_1(backbone_net)
        self.backbone = trunk(backbone_net)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = ClassBlock(feat_dim, num_classes, droprate, linear_num)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pooled backbone feature (B, feat_dim)."""
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
    each classified by its own ClassBlock with a 256-d bottleneck; the training loss is summed over
    the parts. The embedding is the pooled part features (before the bottlenecks).
    """

    parts = 6

    def __init__(self, backbone_net: nn.Module, num_classes: int, droprate=0.5):
        super().__init__()
        _resnet_last_stride_1(backbone_net)
        self.backbone = _resnet_trunk(backbone_net)
        self.pool = nn.AdaptiveAvgPool2d((self.parts, 1))
        self.dropout = nn.Dropout(p=0.5)
        self.classifiers = nn.ModuleList(
            ClassBlock(2048, num_classes, droprate, linear_num=256, relu=True) for _ in range(self.parts)
        )

    def part_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, parts, 2048)."""
        return self.pool(self.backbone(x)).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns one logits tensor (B, num_classes) per part."""
        parts = self.dropout(self.part_features(x))
        return [block(parts[:, i]) for i, block in enumerate(self.classifiers)]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> part features (B, parts, 2048); test.py normalises each part."""
        return self.part_features(x)


def build_model(opts: dict, pretrained: bool | None = None) -> nn.Module:
    """Build the network described by `opts` (train.py's options, as saved in opts.yaml).

    pretrained: load ImageNet weights (default: opts["pretrained"]); test.py passes False since it
    loads a trained checkpoint over them.
    """
    pretrained = opts.get("pretrained", False) if pretrained is None else pretrained
    backbone = "resnet50" if opts.get("PCB") else opts.get("backbone", "resnet50")
    net = load_imagenet_backbone(backbone, pretrained, opts.get("pretrained_path") if pretrained else None)
    if opts.get("PCB"):
        return PCB(net, opts["nclasses"], opts.get("droprate", 0.5))
    return ReIDNet(
        net,
        backbone,
        opts["nclasses"],
        stride=opts.get("stride", 2),
        droprate=opts.get("droprate", 0.5),
        linear_num=opts.get("linear_num", 512),
    )


def checkpoint_path(run_dir: Path, which_epoch: str) -> Path:
    """`--which_epoch 59` -> net_059.pth, `last` -> net_last.pth; a missing one lists those present."""
    name = "net_last.pth" if which_epoch == "last" else f"net_{int(which_epoch):03d}.pth"
    path = Path(run_dir) / name
    if not path.is_file():
        present = sorted(p.stem.removeprefix("net_") for p in Path(run_dir).glob("net_*.pth"))
        raise UserError(
            f"{path}: no such checkpoint; --which_epoch can be one of: {', '.join(present) or 'none (train first)'}"
        )
    return path


def load_trained_model(run_dir: str | Path, which_epoch: str = "last") -> tuple[nn.Module, dict]:
    """Rebuild a trained model from `run_dir/opts.yaml` and load a checkpoint strictly (on the CPU)."""
    opts_file = Path(run_dir) / "opts.yaml"
    if not opts_file.is_file():
        raise UserError(f"{opts_file}: missing; is --name right? train.py writes it")
    opts = load_yaml(opts_file)
    model = build_model(opts, pretrained=False)
    state = torch.load(checkpoint_path(run_dir, which_epoch), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), opts


@torch.no_grad()
def extract_embedding(model: nn.Module, images: torch.Tensor, scales=(1.0,)) -> torch.Tensor:
    """The retrieval feature of a batch (B, 3, H, W): unit-norm rows (B, D), float32.

    Sums the embeddings of each image and its horizontal flip, at every scale in `scales` (each
    resized from `images`), then L2-normalises. PCB: each of the 6 part features is normalised and
    scaled by 1/sqrt(6), so the concatenated (B, 6 * 2048) vector has unit norm.
    """
    total = 0
    for scale in scales:
        x = images
        if scale != 1:
            x = nn.functional.interpolate(images, scale_factor=scale, mode="bicubic", align_corners=False)
        for view in (x, x.flip(dims=[3])):
            total = total + model.embed(view.contiguous(memory_format=torch.channels_last)).float()
    if total.dim() == 3:  # PCB: (B, parts, 2048)
        parts = total.shape[1]
        total = total / (total.norm(dim=2, keepdim=True).clamp_min(1e-12) * parts**0.5)
        return total.flatten(1)
    return total / total.norm(dim=1, keepdim=True).clamp_min(1e-12)

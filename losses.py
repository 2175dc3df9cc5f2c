"""Training objectives: identity cross-entropy (with label smoothing) plus the metric losses of the
classic toolkit, each switched on by its classic flag and weighted by its own option.

`ReIDLoss(options, nclasses, feature_dim)` computes, from a network's training outputs (logits, feature)
(see model.py) and the labels, the weighted sum of the terms and each term's value:

    id        cross-entropy of the logits (summed over PCB's parts), --label_smoothing EPS (BoT: 0.1)
    triplet   batch-hard triplet loss, margin 0.3 (Hermans et al., 2017): pytorch-metric-learning's
              TripletMarginLoss on BatchHardMiner's hardest positive and negative of every anchor,
              averaged over all anchors as BoT does
    circle    circle loss (Sun et al., CVPR 2020), m 0.25, gamma 32 as the classic
    arcface   ArcFace (Deng et al., CVPR 2019), pytorch-metric-learning's defaults (margin 28.6 deg, scale 64)
    cosface   CosFace (Wang et al., CVPR 2018), margin 0.35, scale 64
    sphere    SphereFace (Liu et al., CVPR 2017), margin 4
    contrast  contrastive loss, positive margin 0, negative margin 1 (distances of unit features)
    lifted    generalized lifted structure loss (Song et al., CVPR 2016; Hermans et al.), margins 0 and 1
    instance  instance loss (Zheng et al., TOMM 2020), --ins_gamma 32, written here (see InstanceLoss)
    center    center loss (Wen et al., ECCV 2016), weight 0.0005 as BoT, written here (see CenterLoss)

The metric losses see the network's metric feature: the classic head's embedding, or with BNNeck the
pooled feature before the BN. All but center loss see it L2-normalised, as in the classic toolkit, so
they train the cosine geometry that retrieval ranks by; center loss works on the raw feature, as BoT.
Every term is a mean over the batch (its anchors, pairs or images) times its weight (default 1;
the classic toolkit also divided ArcFace, CosFace, SphereFace, circle and instance terms by the batch
size: their weight 1/32 reproduces that at batch 32).
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F

# Flag -> (help, default weight). The order is the order of the terms in the log.
METRIC_LOSSES = {
    "triplet": ("batch-hard triplet loss, margin 0.3", 1.0),
    "circle": ("circle loss", 1.0),
    "arcface": ("ArcFace loss", 1.0),
    "cosface": ("CosFace loss", 1.0),
    "sphere": ("SphereFace loss", 1.0),
    "contrast": ("contrastive loss", 1.0),
    "lifted": ("lifted structure loss", 1.0),
    "instance": ("instance loss", 1.0),
    "center": ("center loss (BoT)", 0.0005),
}


def add_loss_options(parser: argparse.ArgumentParser) -> None:
    """The objective's options of train.py: label smoothing, and each metric loss with its weight."""
    group = parser.add_argument_group("losses (added to the identity cross-entropy)")
    group.add_argument(
        "--label_smoothing", type=float, default=0.0, help="label smoothing of the cross-entropy (BoT: 0.1)"
    )
    for name, (text, weight) in METRIC_LOSSES.items():
        group.add_argument(f"--{name}", action="store_true", help=f"add the {text}")
        group.add_argument(f"--{name}_weight", type=float, default=weight, help=f"weight of the {name} term")
    group.add_argument(
        "--instance_id", dest="instance", action="store_true", help="= --instance (classic name)"
    )
    group.add_argument(
        "--ins_gamma", type=float, default=32, help="scale of the instance loss's similarities"
    )


def check_loss_options(args) -> str | None:
    """Why these options cannot train (a one-line message), or None."""
    if not 0 <= args.label_smoothing < 1:
        return "--label_smoothing must be in [0, 1)"
    for name in METRIC_LOSSES:
        if getattr(args, name) and getattr(args, f"{name}_weight") < 0:
            return f"--{name}_weight must be >= 0"
    return None


class InstanceLoss(nn.Module):
    """Instance loss (Zheng et al., "Dual-Path Convolutional Image-Text Embeddings with Instance Loss",
    ACM TOMM 2020) as the classic toolkit computes it within a batch: the features of each identity of
    the batch are averaged and L2-normalised, and each identity is classified among the batch's
    identities by a softmax over gamma x the cosine similarities. Written here because
    pytorch-metric-learning's InstanceLoss, given labels, uses identity numbers as image indices,
    which is wrong when an identity has several images in the batch (as with the PK sampler).
    """

    def __init__(self, gamma: float = 32):
        super().__init__()
        self.gamma = gamma

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """feats (B, D), labels (B,) -> scalar; 0 when the batch holds one identity."""
        ids, inverse = torch.unique(labels, return_inverse=True)
        if len(ids) < 2:
            return feats.sum() * 0
        one_hot = F.one_hot(inverse, len(ids)).to(feats.dtype)  # (B, n_ids)
        means = F.normalize(one_hot.T @ feats, dim=1)  # (n_ids, D); the sum has the mean's direction
        sim = self.gamma * means @ means.T  # (n_ids, n_ids)
        return F.cross_entropy(sim, torch.arange(len(ids), device=feats.device))


class CenterLoss(nn.Module):
    """Center loss (Wen et al., "A Discriminative Feature Learning Approach for Deep Face Recognition",
    ECCV 2016): the mean over the batch of 1/2 |f_i - c_(y_i)|^2, which pulls each feature to its
    identity's center.

    The centers are not learned by the optimizer but updated by the paper's rule after each training
    step: c_j <- c_j - alpha * sum_(i: y_i = j) (c_j - f_i) / (1 + n_j), alpha 0.5, summed over every
    process of a distributed run. So they follow the features at their own rate whatever the loss
    weight, learning rate or optimizer (BoT reaches the same with a second optimizer at lr 0.5).
    """

    def __init__(self, num_classes: int, feature_dim: int, alpha: float = 0.5):
        super().__init__()
        self.alpha = alpha
        self.register_buffer("centers", torch.randn(num_classes, feature_dim))

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """feats (B, D), labels (B,) -> scalar; in training mode, then moves the centers."""
        loss = 0.5 * (feats - self.centers[labels]).pow(2).sum(dim=1).mean()
        if self.training:
            self.update(feats.detach().float(), labels)
        return loss

    @torch.no_grad()
    def update(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        import torch.distributed as dist

        diff = torch.zeros_like(self.centers).index_add_(0, labels, self.centers[labels] - feats)
        count = torch.zeros(len(self.centers), device=feats.device).index_add_(
            0, labels, torch.ones_like(labels, dtype=torch.float32)
        )
        if dist.is_initialized():
            dist.all_reduce(diff)
            dist.all_reduce(count)
        self.centers -= self.alpha * diff / (1 + count).unsqueeze(1)


def metric_loss(name: str, options, nclasses: int, feature_dim: int) -> nn.Module:
    """The loss module of a metric-loss flag (pytorch-metric-learning's where it has one)."""
    from pytorch_metric_learning import losses, reducers

    if name == "triplet":
        return losses.TripletMarginLoss(margin=0.3, reducer=reducers.MeanReducer())
    if name == "circle":
        return losses.CircleLoss(m=0.25, gamma=32)
    if name == "arcface":
        return losses.ArcFaceLoss(num_classes=nclasses, embedding_size=feature_dim)
    if name == "cosface":
        return losses.CosFaceLoss(num_classes=nclasses, embedding_size=feature_dim)
    if name == "sphere":
        return losses.SphereFaceLoss(num_classes=nclasses, embedding_size=feature_dim, margin=4)
    if name == "contrast":
        return losses.ContrastiveLoss(pos_margin=0, neg_margin=1)
    if name == "lifted":
        return losses.GeneralizedLiftedStructureLoss(neg_margin=1, pos_margin=0)
    if name == "instance":
        return InstanceLoss(gamma=options.ins_gamma)
    if name == "center":
        return CenterLoss(nclasses, feature_dim)
    raise ValueError(name)


class ReIDLoss(nn.Module):
    """The training objective of train.py's options: weighted sum of the id cross-entropy and the
    metric losses switched on. Its own weights (ArcFace's, CosFace's, SphereFace's class weights) are
    trained with the network; its state (those, and the centers) goes into train.py's checkpoint.pth.
    """

    def __init__(self, options, nclasses: int, feature_dim: int):
        super().__init__()
        from pytorch_metric_learning import miners

        self.label_smoothing = options.label_smoothing
        names = [name for name in METRIC_LOSSES if getattr(options, name)]
        self.weights = {name: getattr(options, f"{name}_weight") for name in names}
        self.terms = nn.ModuleDict(
            {name: metric_loss(name, options, nclasses, feature_dim) for name in names}
        )
        self.miner = miners.BatchHardMiner() if "triplet" in names else None

    def forward(self, outputs, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """outputs = (logits (B, C) or a list of them for PCB, feature (B, D)) -> total, {term: value}."""
        logits, feats = outputs
        parts = logits if isinstance(logits, list) else [logits]
        terms = {"id": sum(F.cross_entropy(p, labels, label_smoothing=self.label_smoothing) for p in parts)}
        feats = feats.float()  # metric losses in float32, also under autocast
        unit = F.normalize(feats, dim=1)  # as the classic toolkit, every loss but center sees unit features
        for name, loss in self.terms.items():
            x = feats if name == "center" else unit
            hardest = (self.miner(x, labels),) if name == "triplet" else ()  # (anchor, pos, anchor, neg)
            terms[name] = loss(x, labels, *hardest)
        total = terms["id"] + sum(self.weights[name] * terms[name] for name in self.terms)
        return total, terms


def predictions(logits) -> torch.Tensor:
    """Top-1 class of the logits (B, C); for PCB's list of part logits, of their summed softmax."""
    if isinstance(logits, list):
        return sum(p.float().softmax(dim=1) for p in logits).argmax(dim=1)
    return logits.argmax(dim=1)

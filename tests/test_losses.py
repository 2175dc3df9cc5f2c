"""losses.py: each loss is finite and decreases on a fixed batch; the hand-written ones on hand-computed
cases; the objective's terms, weights and options."""

import argparse
import math

import pytest
import torch

import losses
from losses import METRIC_LOSSES, CenterLoss, InstanceLoss, ReIDLoss, add_loss_options


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_loss_options(parser)
    return parser.parse_args(list(argv))


def fixed_batch(n_ids=4, per_id=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    feats = torch.randn(len(labels), dim, generator=g)
    return feats, labels


@pytest.mark.parametrize("name", list(METRIC_LOSSES))
def test_each_loss_is_finite_and_decreases_on_a_fixed_batch(name):
    torch.manual_seed(0)
    feats, labels = fixed_batch()
    feats.requires_grad_(True)
    logits = torch.zeros(len(labels), 4, requires_grad=True)
    # gamma 1: at the default 32 the instance loss of random 16-d features is already ~0 in float32
    argv = [f"--{name}", f"--{name}_weight", "1", "--ins_gamma", "1"]
    criterion = ReIDLoss(options(*argv), nclasses=4, feature_dim=16).train()
    optimizer = torch.optim.SGD([feats, logits, *criterion.parameters()], lr=0.5)
    values = []
    for _ in range(8):
        total, terms = criterion((logits, feats), labels)
        assert set(terms) == {"id", name} and torch.isfinite(total)
        assert torch.allclose(total, terms["id"] + terms[name])
        values.append(terms[name].item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert values[-1] < values[0], values


def test_triplet_is_batch_hard_with_margin_0_3_averaged_over_all_anchors():
    # Unit features on a line of angles: ids 0 and 1, two images each.
    angles = torch.tensor([0.0, 0.2, 0.5, 1.5])
    feats = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    _, terms = ReIDLoss(options("--triplet"), 2, 2)((torch.zeros(4, 2), feats), labels)
    d = torch.cdist(feats, feats).tolist()
    # Each anchor: its hardest (farthest) positive and hardest (closest) negative.
    expected = [max(0, d[0][1] - d[0][2] + 0.3), max(0, d[1][0] - d[1][2] + 0.3),
                max(0, d[2][3] - d[2][1] + 0.3), max(0, d[3][2] - d[3][1] + 0.3)]  # fmt: skip
    assert terms["triplet"].item() == pytest.approx(sum(expected) / 4, abs=1e-5)


def test_instance_loss_hand_computed():
    gamma = 32
    # Two identities with orthogonal features: softmax over [gamma, 0] for each.
    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    loss = InstanceLoss(gamma)(feats, torch.tensor([3, 7]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-gamma)), rel=1e-4)
    # Images of one identity are merged into their mean direction: [1, 1] and [1, -1] -> [1, 0]; the
    # other identity at 60 degrees: cosines 1 and 0.5.
    feats = torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.5, math.sqrt(3) / 2]])
    loss = InstanceLoss(2.0)(feats, torch.tensor([0, 0, 1]))
    expected = math.log(1 + math.exp(2.0 * 0.5 - 2.0))  # each row: -log(e^2 / (e^2 + e^1))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert InstanceLoss()(feats, torch.tensor([4, 4, 4])).item() == 0  # one identity: nothing to tell apart


def test_center_loss_hand_computed_and_center_update():
    center = CenterLoss(num_classes=2, feature_dim=2, alpha=0.5)
    center.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    feats = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    center.eval()
    # 1/2 |f - c|^2 per image: 2, 2, 2 -> mean 2; evaluation leaves the centers alone.
    assert center(feats, labels).item() == pytest.approx(2.0)
    assert torch.equal(center.centers, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    center.train()
    center(feats, labels)
    # c_0 <- c_0 - 0.5 * ((0 - 2, 0 - 0) + (0 - 0, 0 - 2)) / (1 + 2) = (1/3, 1/3)
    # c_1 <- c_1 - 0.5 * (1 - 1, 1 - 3) / (1 + 1) = (1, 1.5)
    assert torch.allclose(center.centers, torch.tensor([[1 / 3, 1 / 3], [1.0, 1.5]]))


def test_label_smoothing_and_weights():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    labels = torch.tensor([0])
    _, terms = ReIDLoss(options("--label_smoothing", "0.1"), 3, 4)((logits, torch.randn(1, 4)), labels)
    logp = logits.log_softmax(dim=1)[0]
    expected = -(0.9 + 0.1 / 3) * logp[0] - (0.1 / 3) * (logp[1] + logp[2])
    assert terms["id"].item() == pytest.approx(expected.item(), rel=1e-6)
    feats, labels = fixed_batch()
    criterion = ReIDLoss(options("--triplet", "--triplet_weight", "2.5", "--center"), 4, 16)
    total, terms = criterion.eval()((torch.zeros(16, 4), feats), labels)
    assert total.item() == pytest.approx(
        terms["id"].item() + 2.5 * terms["triplet"].item() + 0.0005 * terms["center"].item(), rel=1e-6
    )
    assert list(terms) == ["id", "triplet", "center"]


def test_pcb_parts_and_predictions():
    parts = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])]
    total, _ = ReIDLoss(options(), 2, 4)((parts, torch.randn(1, 4)), torch.tensor([1]))
    ce = sum(torch.nn.functional.cross_entropy(p, torch.tensor([1])) for p in parts)
    assert total.item() == pytest.approx(ce.item())
    assert losses.predictions(parts).tolist() == [1]  # summed softmax: 0.73 + 0.05 vs 0.27 + 0.95


def test_options():
    assert options("--instance_id").instance and options().ins_gamma == 32
    assert (
        losses.check_loss_options(options("--label_smoothing", "1")) == "--label_smoothing must be in [0, 1)"
    )
    assert "--circle_weight" in losses.check_loss_options(options("--circle", "--circle_weight", "-1"))
    assert losses.check_loss_options(options("--triplet")) is None

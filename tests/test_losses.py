"""Preference losses against their closed forms, computed with Python's math module."""

import math

import pytest
import torch

from lit_idpo.losses import LOSS_TYPES, intermediate_dpo_loss, preference_loss


def _closed_form(loss_type, h, beta, eps):
    """The per-pair loss for one margin h = chosen log-ratio - rejected log-ratio, by hand."""
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    if loss_type == "sigmoid":
        return -(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h))
    if loss_type == "robust":
        return (-(1 - eps) * math.log(sig(beta * h)) + eps * math.log(sig(-beta * h))) / (1 - 2 * eps)
    if loss_type == "hinge":
        return max(0.0, 1 - beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    raise AssertionError(loss_type)


def _random_inputs(layers, pairs, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(-20 * torch.rand(layers, pairs, generator=g, dtype=torch.float64)) for _ in range(4)]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_per_pair_closed_form(loss_type, beta):
    eps = 0.1 if loss_type in ("sigmoid", "robust") else 0.0
    pc, pr, rc, rr = _random_inputs(1, 7)
    got = preference_loss(pc - rc, pr - rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    for i in range(7):
        h = float((pc - rc)[0, i] - (pr - rr)[0, i])
        assert got[0, i].item() == pytest.approx(_closed_form(loss_type, h, beta, eps), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.5, 1.0])
def test_intermediate_combination_closed_form(loss_type, gamma):
    beta = 0.2
    pc, pr, rc, rr = _random_inputs(4, 5, seed=1)  # final + 3 intermediate layers, 5 pairs
    loss, metrics = intermediate_dpo_loss(pc, pr, rc, rr, beta=beta, gamma=gamma, loss_type=loss_type)
    per_layer = []
    for layer in range(4):
        margins = [float((pc - rc)[layer, i] - (pr - rr)[layer, i]) for i in range(5)]
        values = [_closed_form(loss_type, h, beta, 0.0) for h in margins]
        per_layer.append(sum(values) / 5)
    expected = gamma * per_layer[0] + (1 - gamma) * sum(per_layer[1:]) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["loss"].tolist() == pytest.approx(per_layer, rel=1e-12)


def test_gamma_one_and_no_intermediate_layers_are_plain_dpo():
    pc, pr, rc, rr = _random_inputs(3, 6, seed=2)
    plain = preference_loss(pc[0] - rc[0], pr[0] - rr[0], beta=0.1).mean()
    with_layers, _ = intermediate_dpo_loss(pc, pr, rc, rr, beta=0.1, gamma=1.0)
    final_only, _ = intermediate_dpo_loss(pc[:1], pr[:1], rc[:1], rr[:1], beta=0.1, gamma=0.3)
    assert with_layers.item() == pytest.approx(plain.item(), rel=1e-14)
    assert final_only.item() == pytest.approx(plain.item(), rel=1e-14)


def test_metrics_follow_trl_meanings():
    beta = 0.5
    pc = torch.tensor([[-1.0, -2.0, -3.0]], dtype=torch.float64)
    pr = torch.tensor([[-2.0, -2.0, -1.0]], dtype=torch.float64)
    rc = torch.tensor([[-1.5, -2.0, -2.0]], dtype=torch.float64)
    rr = torch.tensor([[-1.5, -2.0, -2.0]], dtype=torch.float64)
    _, m = intermediate_dpo_loss(pc, pr, rc, rr, beta=beta)
    chosen = [0.5 * 0.5, 0.0, 0.5 * -1.0]
    rejected = [0.5 * -0.5, 0.0, 0.5 * 1.0]
    assert m["rewards/chosen"].item() == pytest.approx(sum(chosen) / 3)
    assert m["rewards/rejected"].item() == pytest.approx(sum(rejected) / 3)
    assert m["rewards/margins"].item() == pytest.approx(sum(c - r for c, r in zip(chosen, rejected)) / 3)
    # strictly greater: the tie in pair 1 does not count
    assert m["rewards/accuracies"].item() == pytest.approx(1 / 3)
    assert m["logps/chosen"].item() == pytest.approx(-2.0)
    assert m["logps/rejected"].item() == pytest.approx(-5 / 3)


def test_gradient_matches_closed_form_sigmoid():
    beta = 0.3
    pc = torch.tensor([[-3.0]], dtype=torch.float64, requires_grad=True)
    pr, rc, rr = (torch.tensor([[v]], dtype=torch.float64) for v in (-2.0, -3.5, -1.0))
    loss, _ = intermediate_dpo_loss(pc, pr, rc, rr, beta=beta)
    loss.backward()
    h = (-3.0 + 3.5) - (-2.0 + 1.0)
    # d/dpc -log sigmoid(beta h) = -beta * (1 - sigmoid(beta h))
    assert pc.grad.item() == pytest.approx(-beta * (1 - 1 / (1 + math.exp(-beta * h))), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss_type="nope"), "loss_type"),
        (dict(beta=0.0), "beta"),
        (dict(gamma=1.5), "gamma"),
        (dict(label_smoothing=0.5), "label_smoothing"),
        (dict(loss_type="ipo", label_smoothing=0.1), "label_smoothing"),
    ],
)
def test_bad_arguments(kwargs, match):
    pc, pr, rc, rr = _random_inputs(2, 3)
    with pytest.raises(ValueError, match=match):
        intermediate_dpo_loss(pc, pr, rc, rr, **kwargs)


def test_shape_mismatch():
    pc, pr, rc, rr = _random_inputs(2, 3)
    with pytest.raises(ValueError, match="one shape"):
        intermediate_dpo_loss(pc, pr[:, :2], rc, rr)


# Fixed values, worked out once by hand from the published formulas (the DPO paper's sigmoid loss with
# label smoothing as in cDPO, robust DPO, SLiC's hinge and IPO, as TRL's DPOTrainer writes them):
# policy chosen -10.0, rejected -12.5; reference chosen -11.0, rejected -12.0 -> margin h = 1.5,
# and a second pair with h = -2.0. E.g. sigmoid, beta 0.1, eps 0.1:
# 0.9 * -log(sigmoid(0.15)) + 0.1 * -log(sigmoid(-0.15)) = 0.9 * 0.620957 + 0.1 * 0.770957 = 0.635957.
FIXED_CASES = [
    # beta, eps, (pc, pr, rc, rr), {loss_type: expected}
    (0.1, 0.1, (-10.0, -12.5, -11.0, -12.0),
     {"sigmoid": 0.635957047789532, "robust": 0.602207047789532}),
    (0.1, 0.0, (-10.0, -12.5, -11.0, -12.0), {"hinge": 0.85, "ipo": 12.25}),
    (0.5, 0.2, (-4.0, -2.0, -3.0, -3.0),
     {"sigmoid": 1.11326168751822, "robust": 1.64659502085156}),
    (0.5, 0.0, (-4.0, -2.0, -3.0, -3.0), {"hinge": 2.0, "ipo": 9.0}),
]


@pytest.mark.parametrize("beta, eps, logps, expected", FIXED_CASES)
def test_fixed_values(beta, eps, logps, expected):
    pc, pr, rc, rr = (torch.tensor([[v]], dtype=torch.float64) for v in logps)
    for loss_type, value in expected.items():
        loss, _ = intermediate_dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
        assert loss.item() == pytest.approx(value, rel=1e-12), loss_type

"""Losses and optimizers on plain tensors: the semantics the training stages rely on."""


import pytest
import torch
import torch.nn.functional as F

from handclip.config import RuntimeConfig, Stage2Config
from handclip.train.losses import (
    CenterLoss,
    CrossEntropyLabelSmooth,
    SupConLoss,
    TripletLoss,
    i2t_cross_entropy,
    prompt_l2,
)
from handclip.train.optim import TimmCosineLR, WarmupMultiStepLR, build_stage2_optimizer, stage2_param_groups


def test_label_smoothing_matches_definition():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    target = torch.full((6, 5), 0.1 / 5)
    target[torch.arange(6), labels] += 0.9
    expected = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(CrossEntropyLabelSmooth(0.1)(logits, labels), expected, atol=1e-6)


def test_triplet_batch_hard_picks_hardest_pairs():
    feats = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 3.5]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest positive 1.0, hardest negative 3.0 -> relu(1 - 3 + m)
    margin = 2.5
    loss = TripletLoss(margin)(feats, labels)
    d = torch.cdist(feats, feats)
    expected = []
    for i in range(4):
        pos = max(d[i, j] for j in range(4) if j != i and labels[j] == labels[i])
        neg = min(d[i, j] for j in range(4) if labels[j] != labels[i])
        expected.append(max(0.0, float(pos - neg + margin)))
    assert loss.item() == pytest.approx(sum(expected) / 4, abs=1e-5)


def test_triplet_without_positives_is_zero_but_differentiable():
    feats = torch.randn(4, 3, requires_grad=True)
    loss = TripletLoss(0.3)(feats, torch.arange(4))
    loss.backward()
    assert loss.item() == 0.0 and feats.grad is not None


def test_supcon_is_mean_log_prob_over_positives():
    torch.manual_seed(1)
    a, c = torch.randn(5, 8), torch.randn(7, 8)
    la, lc = torch.tensor([0, 1, 2, 0, 3]), torch.tensor([0, 0, 1, 2, 2, 4, 1])
    loss = SupConLoss()(a, c, la, lc, scale=10.0)
    logits = 10.0 * F.normalize(a, dim=1) @ F.normalize(c, dim=1).T
    logp = F.log_softmax(logits, 1)
    rows = []
    for i in range(5):
        pos = [j for j in range(7) if lc[j] == la[i]]
        if pos:
            rows.append(-logp[i, pos].mean())
    assert loss.item() == pytest.approx(torch.stack(rows).mean().item(), abs=1e-5)


def test_supcon_lower_when_matched():
    torch.manual_seed(2)
    text = torch.randn(4, 16)
    labels = torch.arange(4)
    aligned = SupConLoss()(text + 0.01 * torch.randn(4, 16), text, labels, labels, 20.0)
    shuffled = SupConLoss()(text[[1, 2, 3, 0]], text, labels, labels, 20.0)
    assert aligned < shuffled


@pytest.mark.learning
def test_center_loss_centres_are_parameters_and_learn_the_class_means():
    """The loss is the mean squared distance to the class centre, so gradient descent on the centres moves
    each to its class's mean (each step shrinks the gap by 1 - 2 x lr x 2/6 = 2/3 here), and the loss to
    the mean within-class squared distance."""
    torch.manual_seed(0)
    loss_fn = CenterLoss(3, 4)
    assert [n for n, _ in loss_fn.named_parameters()] == ["centers"]
    feats = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    means = feats.view(3, 2, 4).mean(1)
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
    for _ in range(80):  # (2/3)^80 ~ 1e-14
        opt.zero_grad()
        loss_fn(feats, labels).backward()
        opt.step()
    torch.testing.assert_close(loss_fn.centers.detach(), means, rtol=0, atol=1e-6)
    within = (feats - means[labels]).pow(2).sum(1).mean()
    torch.testing.assert_close(loss_fn(feats, labels), within, rtol=1e-5, atol=0)


def test_i2t_cross_entropy_and_prompt_l2():
    text = torch.eye(3, 8)
    img = text.clone()
    labels = torch.arange(3)
    assert i2t_cross_entropy(img, text, labels, 30.0) < i2t_cross_entropy(img[[1, 2, 0]], text, labels, 30.0)
    ctx = torch.ones(2, 4, 8)
    assert prompt_l2(ctx).item() == pytest.approx(8.0)


def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_prefix_cosine_schedule_values():
    # warmup_prefix=True: the cosine starts once the warm-up is over (CLIP-ReID's default is False:
    # tests/test_clipreid_parity.py).
    opt = _opt(3.5e-4)
    sched = TimmCosineLR(opt, epochs=120, warmup_epochs=5, warmup_lr_init=1e-5, lr_min=1e-6, warmup_prefix=True)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)
    sched.set_position(2.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5 + (3.5e-4 - 1e-5) / 2)
    sched.set_position(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(3.5e-4)
    sched.set_position(120)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6)
    mid = 5 + (120 - 5) / 2
    sched.set_position(mid)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6 + (3.5e-4 - 1e-6) / 2)


def test_warmup_multistep_schedule_values_and_resume():
    opt = _opt(5e-6)
    sched = WarmupMultiStepLR(opt, milestones=[30, 50], gamma=0.1, warmup_factor=0.1, warmup_epochs=10)
    values = {}
    for epoch in (0, 5, 10, 29, 30, 49, 50, 59):
        sched.set_position(epoch)
        values[epoch] = opt.param_groups[0]["lr"]
    assert values[0] == pytest.approx(5e-7)
    assert values[5] == pytest.approx(5e-6 * 0.55)
    assert values[10] == values[29] == pytest.approx(5e-6)
    assert values[30] == values[49] == pytest.approx(5e-7)
    assert values[50] == values[59] == pytest.approx(5e-8)
    state = sched.state_dict()
    opt2 = _opt(5e-6)
    sched2 = WarmupMultiStepLR(opt2, milestones=[30, 50])
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = torch.nn.Linear(4, 4)
        self.text_encoder = torch.nn.Linear(4, 4)
        self.bottleneck = torch.nn.BatchNorm1d(4)
        self.classifier = torch.nn.Linear(4, 3, bias=False)


def test_stage2_groups_bias_lr_weight_decay_heads_and_centres():
    model = _Toy()
    model.text_encoder.requires_grad_(False)
    cfg = Stage2Config(lr=1e-3, bias_lr_factor=2.0, weight_decay=1e-4, weight_decay_bias=0.0, head_lr=5e-3)
    groups = {g["name"]: g for g in stage2_param_groups(model, cfg)}
    assert groups["backbone"]["params"] == [model.image_encoder.weight]
    assert groups["backbone_bias"]["lr"] == pytest.approx(2e-3) and groups["backbone_bias"]["weight_decay"] == 0.0
    assert {id(p) for p in groups["head"]["params"]} == {id(model.bottleneck.weight), id(model.classifier.weight)}
    assert groups["head_bias"]["lr"] == pytest.approx(1e-2)
    center = CenterLoss(3, 4)
    opts, sched = build_stage2_optimizer(model, cfg, RuntimeConfig(), torch.device("cpu"), center_loss=center)
    in_opt = {id(p) for p in opts.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad] + [center.centers]
    assert all(id(p) in in_opt for p in trainable)
    assert not any(id(p) in in_opt for p in model.text_encoder.parameters())
    assert opts.optimizers[1].param_groups[0]["lr"] == cfg.center_lr

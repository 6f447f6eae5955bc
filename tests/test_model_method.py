"""The model (tiny Swin, CPU), weight loading, and the method's schedules, losses and EMA."""

from __future__ import annotations

import math

import pytest
import torch

from ark_dist.method import (MethodConfig, consistency, ema_update, make_teacher, mixed_task_loss, momentum,
                             task_loss)
from ark_dist.model import ArkModel, ModelConfig, load_pretrained

TINY = {"embed_dim": 24, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, "img_size": 64}
HEADS = {"chexpert": 14, "rsna_pneumonia": 3, "shenzhen": 1}


def tiny(**kw) -> ArkModel:
    torch.manual_seed(0)
    return ArkModel(ModelConfig(backbone_kwargs=TINY, projector_dim=32, **kw), heads=HEADS)


def test_forward_backward_all_heads():
    model = tiny()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.projection.shape == (2, 32)
    assert {k: tuple(v.shape) for k, v in out.logits.items()} == {k: (2, n) for k, n in HEADS.items()}
    sum(v.sum() for v in out.logits.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("projector", ["linear", "mlp", "none"])
def test_projector_kinds(projector):
    model = tiny(projector=projector)
    width = 48 if projector == "none" else 32
    assert model(torch.randn(1, 3, 64, 64)).projection.shape == (1, width)


def test_schedules_match_their_formulas():
    config = MethodConfig(momentum=0.9, consistency=0.5)
    total = 1200
    for r in (0, 1, 300, 600, 1199, 1200):
        cos = math.cos(math.pi * r / total)
        assert momentum(config, done=r, total=total) == pytest.approx(1 - 0.1 * (1 + cos) / 2)
        assert consistency(config, done=r, total=total) == pytest.approx(0.5 - 0.25 * (1 + cos))
    assert momentum(config, done=0, total=total) == pytest.approx(0.9)
    assert momentum(config, done=total, total=total) == pytest.approx(1.0)
    assert consistency(config, done=0, total=total) == pytest.approx(0.0)
    assert consistency(config, done=total, total=total) == 0.5


def test_masked_task_loss_equals_the_mean_over_unmasked_labels():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.7, 1.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    ones = torch.ones(2, 2)
    assert task_loss(logits, target=target, mask=ones, task="multilabel") == pytest.approx(bce.mean().item())
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = (bce[0, 0] + bce[1, 0] + bce[1, 1]).item() / 3
    assert task_loss(logits, target=target, mask=mask, task="multilabel") == pytest.approx(expected)
    ce_logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    onehot = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    expected = torch.nn.functional.cross_entropy(ce_logits, torch.tensor([1, 0]))
    got = task_loss(ce_logits, target=onehot, mask=torch.ones(2, 3), task="multiclass")
    assert got == pytest.approx(expected.item())
    half = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert task_loss(ce_logits, target=onehot, mask=half, task="multiclass") == pytest.approx(
        torch.nn.functional.cross_entropy(ce_logits[:1], torch.tensor([1])).item())


def test_interleaved_loss_counts_each_sample_by_its_own_head():
    torch.manual_seed(0)
    logits = {"a": torch.randn(4, 2), "b": torch.randn(4, 3)}
    target = torch.zeros(4, 5)
    mask = torch.zeros(4, 5)
    dataset = torch.tensor([0, 1, 0, 1])
    target[0, :2], target[2, :2] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mask[[0, 2], :2] = 1.0
    target[1, 2:], target[3, 2:] = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0])
    mask[[1, 3], 2:] = 1.0
    heads = [("a", "multilabel"), ("b", "multiclass")]
    got = mixed_task_loss(logits, target=target, mask=mask, dataset=dataset, heads=heads)
    a = task_loss(logits["a"][[0, 2]], target=target[[0, 2], :2], mask=torch.ones(2, 2), task="multilabel")
    b = task_loss(logits["b"][[1, 3]], target=target[[1, 3], 2:], mask=torch.ones(2, 3), task="multiclass")
    assert got == pytest.approx((0.5 * a + 0.5 * b).item())
    single = torch.zeros(4, dtype=torch.long)  # a batch of one dataset: exactly its task loss
    full_mask = torch.zeros(4, 5)
    full_mask[:, :2] = 1.0
    assert mixed_task_loss(logits, target=target, mask=full_mask, dataset=single, heads=heads) == pytest.approx(
        task_loss(logits["a"], target=target[:, :2], mask=torch.ones(4, 2), task="multilabel").item())
    logits = {k: v.clone().requires_grad_() for k, v in logits.items()}
    mixed_task_loss(logits, target=target, mask=full_mask, dataset=single, heads=heads).backward()
    assert logits["b"].grad is not None and not logits["b"].grad.any(), "a head without samples gets a zero gradient"


def test_teacher_starts_as_a_frozen_copy_and_follows_the_ema():
    student = tiny()
    teacher = make_teacher(student)
    for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
        assert torch.equal(t, s)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher.parameters(), student=student.parameters(), m=0.9)
    for old, new, s in zip(before, teacher.parameters(), student.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * s)


def test_pretrained_from_timm_and_ark_layouts_reports_keys(tmp_path):
    source = tiny()
    torch.save({"model": source.backbone.state_dict()}, tmp_path / "timm.pth")  # release-style nesting
    logged = []
    target = tiny()
    missing, unexpected = load_pretrained(target, str(tmp_path / "timm.pth"), log=logged.append)
    assert missing == [] and unexpected == [] and "backbone missing 0" in logged[0]
    for a, b in zip(target.backbone.state_dict().values(), source.backbone.state_dict().values()):
        assert torch.equal(a, b)
    torch.save({"teacher": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ark.pth.tar")
    other = tiny()
    with torch.no_grad():
        for p in [*other.projector.parameters(), *other.omni_heads.parameters()]:
            p.zero_()
    load_pretrained(other, str(tmp_path / "ark.pth.tar"), log=logged.append)
    for name, tensor in source.state_dict().items():  # ark-dist's own `omni_heads.<dataset>.*` names
        assert torch.equal(other.state_dict()[name], tensor), f"continual training keeps {name}"


def test_pretrained_refuses_pickles_and_foreign_models(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(ValueError, match="refused to unpickle"):
        load_pretrained(tiny(), str(tmp_path / "evil.pth"), log=lambda *_: None)
    torch.save({"model": {"fc.weight": torch.zeros(3, 3)}}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="no backbone weight matches"):
        load_pretrained(tiny(), str(tmp_path / "resnet.pth"), log=lambda *_: None)


def _saved_bytes_and_grads(model, images) -> tuple[int, dict]:
    """Bytes autograd keeps for the backward pass (every tensor a forward op saves), and the grads."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(images)
    (out.projection.square().sum() + sum(v.sum() for v in out.logits.values())).backward()
    return sum(saved), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_grad_checkpointing_keeps_the_gradients_and_saves_less_for_backward():
    """The oracle is the same network without it: equal gradients; what autograd keeps between
    forward and backward shrinks to the blocks' inputs."""
    deeper = {**TINY, "depths": [2, 2]}
    images = torch.randn(2, 3, 64, 64)
    runs = {}
    for on in (False, True):
        torch.manual_seed(0)
        model = ArkModel(ModelConfig(backbone_kwargs=deeper, projector_dim=32, grad_checkpointing=on), heads=HEADS)
        runs[on] = _saved_bytes_and_grads(model, images)
    (plain, plain_grads), (kept, grads) = runs[False], runs[True]
    assert plain_grads.keys() == grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert kept < 0.5 * plain, (kept, plain)

"""Foundation X's model and method parts, in-process on a tiny Swin: each task's forward and
backward reaches the parts it should, an Ark export loads with every key reported, every parameter
is in an optimizer group, a lock pass leaves the trunk bitwise unchanged (and the release pass
moves it), the teacher's EMA covers the buffers, and the reference's 20-step cycle gives its passes."""

from __future__ import annotations

import math

import pytest
import torch

from ark_dist.method.config import FoundationConfig
from ark_dist.method.foundation import (TRUNK, Clock, Pass, Step, cycle_lr_scale, ema_module, feature_consistency,
                                        parameter_groups, pass_steps, passes, seg_loss, ungrouped)
from ark_dist.model import load_pretrained
from ark_dist.model.config import DenseConfig, ModelConfig
from ark_dist.model.foundation import FoundationModel
from conftest import TINY_SWIN, tiny_export

SIDE = 64
CLASSES = {"node21": 1, "chestx_det": 3, "chexpert": 5}
BOXES = {"node21": 1, "chestx_det": 3}
MASKS = {"chestx_det": 3, "siim_acr": 1}
# The reference's cycle (DESIGN 8), in its order.
REFERENCE = ["chexpert:cls", "chestxray14:cls", "vindr_cxr:cls", "shenzhen:cls", "mimic_cxr:cls", "tbx11k:cls",
             "tbx11k:loc", "node21:cls", "node21:loc", "candid_ptx:cls", "candid_ptx:loc", "candid_ptx:seg",
             "rsna_pneumonia:cls", "rsna_pneumonia:loc", "chestx_det:cls", "chestx_det:loc", "chestx_det:seg",
             "siim_acr:cls", "siim_acr:loc", "siim_acr:seg"]


def _model(seed: int = 0, projector: str = "none", grad_checkpointing: bool = False) -> FoundationModel:
    torch.manual_seed(seed)
    config = ModelConfig(backbone="swin_tiny_patch4_window7_224", backbone_kwargs=TINY_SWIN, projector=projector,
                         projector_dim=32, dense=DenseConfig(loc_channels=32, loc_convs=1, seg_channels=16),
                         grad_checkpointing=grad_checkpointing)
    return FoundationModel(config, classes=CLASSES, boxes=BOXES, masks=MASKS)


def _boxes(batch: int, classes: int) -> list[dict]:
    return [{"boxes": torch.tensor([[8.0, 10.0, 30.0, 28.0]]), "labels": torch.tensor([i % classes])}
            for i in range(batch)]


def _loss(model: FoundationModel, images: torch.Tensor, step: Step) -> torch.Tensor:
    out = model(images, task=step.task, dataset=step.dataset)
    if step.task == "cls":
        return out.logits[step.dataset].square().mean()
    if step.task == "loc":
        return sum(model.loc_heads[step.dataset].loss(out.loc, _boxes(len(images), BOXES[step.dataset])).values())
    target = (torch.rand(out.masks.shape) > 0.7).float()
    return seg_loss(out.masks, target=target, known=torch.ones(out.masks.shape[:2], dtype=torch.bool), bce=1.0)


@pytest.mark.parametrize("step, reached, untouched", [
    (Step("chexpert", "cls"), {"backbone", "omni_heads.chexpert"}, {"omni_heads.node21", "loc_neck", "seg_decoder"}),
    (Step("node21", "loc"), {"backbone", "loc_neck", "loc_heads.node21"}, {"loc_heads.chestx_det", "seg_decoder"}),
    (Step("siim_acr", "seg"), {"backbone", "seg_decoder", "seg_heads.siim_acr"}, {"seg_heads.chestx_det", "loc_neck"}),
])
def test_each_task_trains_the_backbone_its_shared_part_and_its_own_head_only(step, reached, untouched):
    model = _model()
    _loss(model, torch.randn(2, 3, SIDE, SIDE), step).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for prefix in reached:
        assert any(n.startswith(prefix + ".") for n in with_grad), prefix
    for prefix in untouched:
        assert not any(n.startswith(prefix + ".") for n in with_grad), prefix


@pytest.mark.parametrize("step", [Step("chexpert", "cls"), Step("node21", "loc"), Step("siim_acr", "seg")])
def test_grad_checkpointing_gives_every_task_the_same_gradients(step):
    """The backbone's stages recompute in backward, the multi-scale features (forward_intermediates)
    included: the gradients equal the plain network's."""
    images = torch.randn(2, 3, SIDE, SIDE)
    grads = []
    for on in (False, True):
        model = _model(grad_checkpointing=on)
        torch.manual_seed(1)  # the seg target's draw
        _loss(model, images, step).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("backbone.") for n in grads[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("step", [Step("chexpert", "cls"), Step("node21", "loc"), Step("siim_acr", "seg")])
def test_idle_gives_every_parameter_a_zero_gradient_and_leaves_batchnorm_statistics_alone(step):
    model = _model()
    images = torch.randn(2, 3, SIDE, SIDE)
    out = model(images, task=step.task, dataset=step.dataset)
    stats = {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}
    idle = model.idle(out, task=step.task, dataset=step.dataset)
    assert idle.item() == 0.0
    assert all(torch.equal(stats[n], b) for n, b in model.named_buffers() if n in stats)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the segmentation target is drawn
    (_loss(model, images, step) + idle).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    reference = _model()
    torch.manual_seed(5)
    _loss(reference, images, step).backward()  # the same step without idle: the same gradients
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad if q.grad is not None else torch.zeros_like(p), msg=n)


def test_outputs_have_the_task_shapes_and_detections_decode_to_input_pixels():
    model = _model().eval()
    images = torch.randn(3, 3, SIDE, SIDE)
    assert model(images, task="cls", dataset="chestx_det").logits["chestx_det"].shape == (3, 3)
    assert model(images, task="seg", dataset="chestx_det").masks.shape == (3, 3, SIDE, SIDE)
    out = model(images, task="loc", dataset="chestx_det")
    detections = model.loc_heads["chestx_det"].detect(out.loc)
    assert len(detections) == 3
    for found in detections:
        assert found["boxes"].shape[1] == 4 and len(found["boxes"]) == len(found["scores"]) == len(found["labels"])
        assert found["boxes"].min() >= 0 and found["boxes"].max() <= SIDE and found["labels"].max() < 3
    with pytest.raises(ValueError, match="task 'box'"):
        model(images, task="box", dataset="node21")


def test_every_head_of_a_task_on_one_backbone_pass_equals_each_heads_own_forward():
    """What a release's detect/segment run: one backbone pass for all heads, and the outputs each
    head's own training-style forward gives."""
    model = _model().eval()
    images = torch.randn(2, 3, SIDE, SIDE)
    passes = []
    model.backbone.patch_embed.register_forward_hook(lambda *_: passes.append(1))  # once a backbone pass
    with torch.no_grad():
        raw, masks = model.every_head(images, task="loc"), model.every_head(images, task="seg")
        assert len(passes) == 2 and raw.keys() == BOXES.keys() and masks.keys() == MASKS.keys()
        for name in BOXES:
            own = model.loc_heads[name].detect(model(images, task="loc", dataset=name).loc)
            for ours, theirs in zip(model.loc_heads[name].detect(raw[name]), own):
                for key in ("boxes", "scores", "labels"):
                    torch.testing.assert_close(ours[key], theirs[key])
        for name in MASKS:
            torch.testing.assert_close(masks[name], model(images, task="seg", dataset=name).masks)
    with pytest.raises(ValueError, match="task 'cls' is loc or seg"):
        model.every_head(images, task="cls")


def test_an_ark_export_loads_into_the_backbone_projector_and_heads_with_every_key_reported(tmp_path):
    from safetensors.torch import load_file

    url = tiny_export(tmp_path / "ark.safetensors", {"chexpert": list("abcde"), "shenzhen": ["TB"]}, seed=3)
    model, lines = _model(projector="linear"), []
    missing, unexpected = load_pretrained(model, url, log=lines.append)
    exported = load_file(url)
    state = model.state_dict()
    backbone = [k for k in exported if not k.startswith(("projector.", "omni_heads."))]
    assert backbone and all(torch.equal(state[f"backbone.{k}"], exported[k]) for k in backbone)
    assert torch.equal(state["projector.weight"], exported["projector.weight"])
    assert torch.equal(state["omni_heads.chexpert.weight"], exported["omni_heads.chexpert.weight"])
    assert missing == [] and sorted(unexpected) == ["omni_heads.shenzhen.bias", "omni_heads.shenzhen.weight"]
    assert "omni_heads.shenzhen.weight [no such tensor in the model]" in lines[0]


def test_every_trainable_parameter_is_in_exactly_one_group_and_the_backbone_gets_its_own_lr():
    model = _model(projector="linear")
    groups = parameter_groups(model, lr=1e-4, backbone_lr_scale=0.1, weight_decay=1e-4)
    assert ungrouped(model, groups) == []
    held = [id(p) for g in groups for p in g["params"]]
    assert len(held) == len(set(held)) == sum(1 for p in model.parameters() if p.requires_grad)
    assert {g["name"]: g["lr"] for g in groups}["backbone"] == pytest.approx(1e-5)
    assert all(g["lr"] == 1e-4 for g in groups if g["name"] != "backbone")
    # The check itself finds what a group list leaves out (the reference's bug: the loc outputs).
    partial = [g for g in groups if g["name"] != "loc_heads"]
    expected = [n for n, _ in model.named_parameters() if n.startswith("loc_heads.")]
    assert expected and ungrouped(model, partial) == expected


@pytest.mark.parametrize("task", ["loc", "seg"])
def test_a_lock_pass_leaves_the_trunk_bitwise_unchanged_and_the_release_pass_moves_it(task):
    """The trainer's own LR clock (LambdaLR over `Clock.lr_scales`, stepped after every optimizer
    step) through release (2 steps), lock (3) and release (1), AdamW with weight decay."""
    dataset = "chestx_det"
    model = _model()
    groups = parameter_groups(model, lr=1e-2, backbone_lr_scale=0.1, weight_decay=1e-2)
    optimizer = torch.optim.AdamW(groups)
    step = Step(dataset, task)
    clock = Clock(passes=(Pass(step, "release", 1.0), Pass(step, "lock", 0.5), Pass(step, "release", 1.0)),
                  steps=(2, 3, 1), cycles=1, warmup_cycles=0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, clock.lr_scales(groups))

    def train(steps: int) -> dict:
        for _ in range(steps):
            optimizer.zero_grad()
            _loss(model, torch.randn(2, 3, SIDE, SIDE), step).backward()
            optimizer.step()
            scheduler.step()
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    before = train(2)  # the trunk's Adam moments are not zero when the lock comes
    locked = train(3)
    trunk = [n for n in before if n.split(".")[0] in TRUNK[task]]
    own = [n for n in before if n.startswith(f"{task}_heads.{dataset}.")]
    assert trunk and all(torch.equal(before[n], locked[n]) for n in trunk)
    assert all(not torch.equal(before[n], locked[n]) for n in own)
    released = train(1)
    assert any(not torch.equal(locked[n], released[n]) for n in trunk if "backbone" in n)


def test_the_clock_locates_every_step_and_zeroes_exactly_the_locked_groups():
    step = Step("node21", "loc")
    cycle = (Pass(Step("node21", "cls"), "train", 1.0), Pass(step, "lock", 0.5), Pass(step, "release", 1.0))
    clock = Clock(passes=cycle, steps=(4, 2, 4), cycles=3, warmup_cycles=1, warmup_scale=0.05)
    assert [clock.locate(s) for s in (0, 3, 4, 5, 6, 9, 10, 29, 35)] == [
        (0, 0), (0, 0), (0, 1), (0, 1), (0, 2), (0, 2), (1, 0), (2, 2), (2, 1)]  # past the end: the last cycle
    scales = clock.lr_scales([{"name": "backbone"}, {"name": "loc_neck"}, {"name": "loc_heads"}])
    table = [[round(f(s), 6) for f in scales] for s in (3, 4, 5, 6, 14, 16)]
    cosine = round((1 + math.cos(math.pi / 2)) / 2, 6)  # cycle 2 of 3, the second after the warm-up
    assert table == [[0.05] * 3, [0, 0, 0.05], [0, 0, 0.05], [0.05] * 3, [0, 0, 1.0], [1.0] * 3]
    assert [round(f(27), 6) for f in scales] == [cosine] * 3 and [round(f(25), 6) for f in scales] == [0, 0, cosine]


def test_the_teacher_ema_averages_parameters_and_batchnorm_statistics():
    student, teacher = _model(seed=1), _model(seed=2)
    student.train()
    student(torch.randn(4, 3, SIDE, SIDE), task="seg", dataset="siim_acr")  # moves BatchNorm's running stats
    before = [b.clone() for b in teacher.buffers()]
    before_params = [p.detach().clone() for p in teacher.parameters()]
    ema_module(teacher, student_params=student.parameters(), student_buffers=student.buffers(), m=0.8)
    bn = [i for i, (n, _) in enumerate(teacher.named_buffers()) if n.endswith("running_mean")]
    assert bn
    for t, s, b in zip(teacher.buffers(), student.buffers(), before):
        if t.is_floating_point():
            torch.testing.assert_close(t, 0.8 * b + 0.2 * s, rtol=0, atol=1e-6)
        else:
            assert torch.equal(t, s)  # counters are copied
    after = list(teacher.buffers())
    assert all(not torch.equal(after[i], before[i]) for i in bn)  # the statistics did move
    for t, s, b in zip(teacher.parameters(), student.parameters(), before_params):
        torch.testing.assert_close(t, 0.8 * b + 0.2 * s.detach(), rtol=0, atol=1e-6)


def test_the_reference_cycle_gives_eleven_passes_and_nine_lock_release_pairs():
    config = FoundationConfig(steps=REFERENCE)
    config.validate()
    cycle = passes(config)
    assert len(cycle) == 11 + 2 * 9  # 11 classification steps, 6 loc + 3 seg steps of two passes each
    assert [str(p.step) for p in cycle if p.kind != "release"] == REFERENCE
    locks = [p for p in cycle if p.kind == "lock"]
    assert [p.locked for p in locks[:1]] == [("backbone", "loc_neck")] and all(p.fraction == 0.5 for p in locks)
    assert pass_steps(locks[0], round_steps=7) == 3 and pass_steps(locks[0], round_steps=1) == 1
    assert pass_steps(cycle[0], round_steps=7) == 7
    with pytest.raises(ValueError, match="'node21:box'"):
        FoundationConfig(steps=["node21:box"]).validate()


def test_the_cycle_lr_is_a_twentieth_then_a_cosine_stepped_per_cycle():
    assert cycle_lr_scale(0, cycles=5) == 0.05
    assert [cycle_lr_scale(c, cycles=5) for c in range(1, 5)] == pytest.approx(
        [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2])


def test_feature_consistency_normalises_dense_maps_and_reaches_only_the_student():
    student = torch.randn(2, 4, 3, 3, requires_grad=True)
    teacher = student.detach() * 3  # the same directions, three times as long
    assert feature_consistency([student], [teacher], normalize=True).item() == pytest.approx(0.0, abs=1e-10)
    plain = feature_consistency([student], [teacher], normalize=False)
    assert plain.item() == pytest.approx((4 * student.detach() ** 2).mean().item())
    plain.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_family_means_average_each_metric_over_the_steps_leaving_nan_out():
    from ark_dist.train.foundation_worker import family_means

    out = family_means({"auc/val/a/teacher": 0.8, "auc/val/b/teacher": 0.6, "auc/val/c/teacher": float("nan"),
                        "map50/test/a/student": float("nan"), "dice/val/a/teacher": 0.5})
    assert out["auc/val/mean/teacher"] == pytest.approx(0.7) and out["dice/val/mean/teacher"] == 0.5
    assert math.isnan(out["map50/test/mean/student"]) and len(out) == 3


@pytest.mark.parametrize("override, named", [("engine.grad_accum=2", "grad_accum=1"), ("engine.precision=fp16", "fp32")])
def test_a_recipe_whose_optimizer_steps_would_drift_from_the_lr_clock_is_one_line(override, named):
    """Gradient accumulation steps once per k batches and fp16 skips overflowed steps: either would
    move the lock's zero LR off its passes."""
    from ark_dist.config import load

    with pytest.raises(ValueError, match=named):
        load(None, ["data.datasets=[node21]", "method.foundation.steps=[node21:cls, node21:loc]",
                    "train.global_batch=8", override])

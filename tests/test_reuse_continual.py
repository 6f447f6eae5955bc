"""Continual extension (Ark+ added COVIDx to a trained model): a run whose `model.pretrained` is an
exported teacher and whose datasets add one starts with every old head, the projector and the
backbone equal to the file's bitwise, the new head as training initialises heads, and the teacher
equal to the loaded student. (This is the worker's construction order: model, load, teacher.)"""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from ark_dist.export import exported_tensors, metadata
from ark_dist.method import make_teacher
from ark_dist.model import ArkModel, load_pretrained
from ark_dist.model.config import ModelConfig

TINY = {"embed_dim": 24, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, "img_size": 64}
OLD = {"chexpert": 14, "shenzhen": 1}


def _config() -> ModelConfig:
    return ModelConfig(backbone="swin_tiny_patch4_window7_224", backbone_kwargs=TINY, projector_dim=32)


def test_old_heads_projector_and_backbone_come_from_the_file_and_the_new_head_is_fresh(tmp_path):
    torch.manual_seed(0)
    trained = ArkModel(_config(), heads=OLD)
    with torch.no_grad():  # weights no fresh model could have
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    state = {"labels": {"chexpert": [f"c{i}" for i in range(14)], "shenzhen": ["Tuberculosis"]},
             "cursor": {"epoch": 3, "round": 0, "step": 0}, "manifest_sha256": "0" * 64}
    path = str(tmp_path / "teacher.safetensors")
    save_file(exported_tensors(trained), path, metadata=metadata(trained, state, source="test", which="teacher"))
    file = load_file(path)

    torch.manual_seed(1)
    extended = ArkModel(_config(), heads={**OLD, "covidx": 3})  # as the worker builds it: every head, in order
    fresh_head = {k: v.clone() for k, v in extended.omni_heads["covidx"].state_dict().items()}
    missing, unexpected = load_pretrained(extended, path, log=lambda *_: None)
    assert missing == [] and unexpected == []
    ours = extended.state_dict()
    for key, tensor in file.items():  # every file tensor, under our name, bitwise
        name = key if key.startswith(("projector.", "omni_heads.")) else f"backbone.{key}"
        assert torch.equal(ours[name], tensor), name
    assert all(torch.equal(extended.omni_heads["covidx"].state_dict()[k], v) for k, v in fresh_head.items())
    teacher = make_teacher(extended)
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), extended.state_dict().values()))


def test_the_continual_recipes_add_a_dataset_after_the_six_and_start_from_a_teacher():
    from pathlib import Path

    from ark_dist.config import load
    from ark_dist.data.config import ARK6

    root = Path(__file__).resolve().parents[1] / "configs"
    for name, base in (("ark6_plus_tbx11k", "ark6.yaml"), ("demo", "demo.yaml")):
        cfg, before = load(root / "continual" / f"{name}.yaml"), load(root / base)
        assert cfg.data.datasets == [*ARK6, "tbx11k"] and before.data.datasets == ARK6  # old heads keep their order
        assert cfg.model.pretrained.endswith(".safetensors") and cfg.train.name != before.train.name
        assert (cfg.model.backbone, cfg.model.projector_dim) == (before.model.backbone, before.model.projector_dim)

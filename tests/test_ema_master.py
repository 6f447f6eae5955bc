"""The teacher's EMA reads the optimizer's fp32 master weights, not the engine's bf16 module copy.

Two gloo ranks in child processes run real DeepSpeed engines in bf16 on the CPU, a few steps with
an LR so small that most updates fall below bf16's resolution: they exist only in the fp32 master
weights. The oracle is what the optimizer itself saved: DeepSpeed's checkpoint, read back by its
own zero_to_fp32 (ZeRO 1-3), or the fp32 flat groups that its bf16 optimizer saves (ZeRO 0)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

TINY = "{embed_dim: 24, depths: [1, 1], num_heads: [1, 2], window_size: 4, img_size: 64, drop_path_rate: 0.0}"
M = 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _saved_fp32(folder: str, stage: int, names: list[str]) -> dict[str, torch.Tensor]:
    """The fp32 weights the optimizer saved, by parameter name (trainable parameters, module order)."""
    if stage:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return {k: v.float() for k, v in get_fp32_state_dict_from_zero_checkpoint(folder, tag="t").items()}
    state = torch.load(f"{folder}/t/mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    optimizer = state["optimizer"]
    if "fp32_groups_flat" in optimizer:  # DeepSpeed's fused FP16_Optimizer: one flat tensor per group
        flat = torch.cat([g.float().flatten() for g in optimizer["fp32_groups_flat"]])
        shapes = [state["module"][n].shape for n in names]
        tensors = list(torch.split(flat, [s.numel() for s in shapes]))
        tensors = [t.view(s) for t, s in zip(tensors, shapes)]
    else:  # FP16_UnfusedOptimizer (what the CPU gets): one fp32 tensor per parameter, in group order
        tensors = [t.float() for group in optimizer["fp32_groups"] for t in group]
    assert len(tensors) == len(names)
    return dict(zip(names, tensors))


def _rank(rank: int, world: int, port: int, stage: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    import deepspeed
    import torch.distributed as dist

    from ark_dist.config import load
    from ark_dist.method import make_teacher
    from ark_dist.model import ArkModel
    from ark_dist.train import engine as engines

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = load(None, [f"model.backbone_kwargs={TINY}", "model.projector_dim=16", "engine.precision=bf16",
                      f"engine.zero_stage={stage}", "optim.lr=1e-4", "optim.nesterov=false", "optim.momentum=0.0", "train.global_batch=4"])
    torch.manual_seed(0)
    model = ArkModel(cfg.model, heads={"a": 3, "b": 2})
    teacher = make_teacher(model)
    names = [n for n, _ in model.named_parameters()]
    engine = engines.build(model, cfg, micro_batch=2, total_steps=100, warmup_steps=0)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(3):
        out = engine(torch.randn(2, 3, 64, 64, generator=generator).to(torch.bfloat16))
        loss = sum(v.float().pow(2).mean() for v in out.logits.values()) + out.projection.float().pow(2).mean()
        engine.backward(loss)
        engine.step()
    engines.update_teacher(engine, teacher, M)  # what the trainer calls after a round
    with engines.gathered_parameters(engine):
        module = {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}
    engine.save_checkpoint(folder, tag="t")
    dist.barrier()
    if rank == 0:
        torch.save({"teacher": {n: p.detach().clone() for n, p in zip(names, teacher.parameters())},
                    "module": module, "saved": _saved_fp32(folder, stage, names)}, f"{folder}/result.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_bf16_teacher_is_the_ema_of_the_fp32_master_weights(stage, tmp_path):
    import copy

    from ark_dist.config import load
    from ark_dist.model import ArkModel

    mp.start_processes(_rank, args=(2, _free_port(), stage, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    got = torch.load(tmp_path / "result.pt", weights_only=True)
    # The start, rebuilt here the way every rank built it (same seed, fp32).
    cfg = load(None, [f"model.backbone_kwargs={TINY}", "model.projector_dim=16"])
    torch.manual_seed(0)
    start = dict(copy.deepcopy(ArkModel(cfg.model, heads={"a": 3, "b": 2})).named_parameters())
    lost = 0
    for name, teacher in got["teacher"].items():
        master = got["saved"][name]
        expected = M * start[name].detach() + (1 - M) * master
        assert torch.allclose(teacher, expected, rtol=0, atol=1e-7), name
        from_module = M * start[name].detach() + (1 - M) * got["module"][name]
        lost += int((from_module != expected).sum())
    assert lost > 0, "the bf16 module copy held every update: the test would not tell the two apart"

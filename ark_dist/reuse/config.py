"""The `finetune` section: transfer to one dataset (`launch.py finetune`), BenchmarkTransformers'
protocol by default (configs/finetune/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True)
class FinetuneConfig:
    """Set `target` and the run fine-tunes instead of pretraining: the backbone of `init` with a new
    linear head for `target` (no projector, no teacher), the best epoch by validation loss, early
    stopping, and the test split scored by that best model."""

    target: str | None = None  # the dataset fine-tuned on (its label policy and official split); None = pretraining
    init: str = "random"  # ark-dist run/checkpoint/export, a published Ark .pth.tar, official Swin / timm file, random
    freeze: Literal["none", "backbone"] = "none"  # backbone: train only the new head (a linear probe by SGD)
    patience: int = 10  # stop once more than this many epochs in a row bring no lower validation loss (BenchmarkTransformers)
    trials: int = 1  # independent runs (seeds train.seed + i), reported as the mean +- std of their test AUC
    train_subset: float | None = None  # training patients: a count (>= 1) or a fraction (< 1); None = all
    subset_seed: int = 0  # the patient order subsets take from: a smaller subset is a prefix of a larger one
    # Training samples whose facts have one of the listed values, e.g. {sex: [F]}: the MICCAI
    # gender-bias experiment (fine-tune on one sex, test on both). Keys: sex, view.
    train_where: dict[str, list[str]] = field(default_factory=dict)  # e.g. {sex: [F]}: train on these samples only
    test_ten_crop: bool = True  # the test split through ten crops, probabilities averaged (BenchmarkTransformers)

    def validate(self) -> None:
        if self.patience < 0 or self.trials < 1:
            raise ValueError("finetune.patience must be >= 0 and finetune.trials >= 1")
        unknown = sorted(set(self.train_where) - {"sex", "view"})
        if unknown or any(not isinstance(v, list) or not v for v in self.train_where.values()):
            raise ValueError(f"finetune.train_where={self.train_where!r}: keys among sex and view, each a "
                             f"non-empty list of values{f' (not {unknown})' if unknown else ''}")
        subset = self.train_subset
        if subset is not None and not (0 < subset < 1 or (subset >= 1 and float(subset).is_integer())):
            raise ValueError(f"finetune.train_subset={subset!r} must be a fraction in (0, 1) or a whole count >= 1")

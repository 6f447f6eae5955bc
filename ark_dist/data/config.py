"""The `data` section of the config: where shards are, how labels and views are made, how the
loader runs. Defaults reproduce Ark (DESIGN 3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ARK6 = ["mimic_cxr", "chexpert", "chestxray14", "rsna_pneumonia", "vindr_cxr", "shenzhen"]


@dataclass(kw_only=True)
class StoreConfig:
    """The shard store and how it is read."""

    url: str = "out/store"  # local folder or s3://bucket/prefix (the `shards build --out`)
    endpoint_url: str | None = None  # S3-compatible endpoint; default: AWS_ENDPOINT_URL
    retries: int = 6  # attempts per read before an outage fails the run
    backoff_s: float = 0.5  # first retry delay; doubles each attempt (capped at 8 s)
    block_mb: float = 16.0  # ranged-read size when streaming from S3
    cache_dir: str | None = None  # node-local shard cache (content-addressed by sha256); None = off
    cache_gb: float = 200.0  # the cache's size bound; least recently used shards are evicted

    def validate(self) -> None:
        if self.retries < 1 or self.backoff_s < 0 or self.block_mb <= 0 or self.cache_gb <= 0:
            raise ValueError("retries >= 1, backoff_s >= 0, block_mb > 0 and cache_gb > 0 are required")


@dataclass(kw_only=True)
class PolicyConfig:
    """How one dataset's raw label facts become targets and masks."""

    uncertain: Literal["ones", "zeros", "lsr", "masked"] = "ones"  # -1 facts
    lsr_range: tuple[float, float] = (0.55, 0.85)  # LSR: U(a, b), drawn once per (image, class)
    blank: Literal["zero", "masked"] = "zero"  # null (not mentioned) facts
    readers: Literal["any", "majority"] = "any"  # multi-reader votes -> one label

    def validate(self) -> None:
        low, high = self.lsr_range
        if not 0 <= low <= high <= 1:
            raise ValueError(f"lsr_range {self.lsr_range} must satisfy 0 <= a <= b <= 1")


def _ark_policies() -> dict[str, PolicyConfig]:
    # Ark: CheXpert uncertain -> LSR-Ones U(0.55, 0.85); MIMIC (and the rest) uncertain -> 1; blank -> 0.
    return {"chexpert": PolicyConfig(uncertain="lsr")}


def _ark_metric_labels() -> dict[str, list[str]]:
    # Ark reports CheXpert on the 5 classes of its competition (DESIGN 3).
    return {"chexpert": ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]}


@dataclass(kw_only=True)
class ViewConfig:
    """The student, teacher and evaluation views (DESIGN 3). Geometry is one affine warp per view,
    drawn in the loader and applied to whole batches on the training device."""

    image_size: int = 224  # network input side (768 for Ark+)
    load_size: int = 512  # side of the square canvas the loader decodes to; crops come from it (Ark-6: 512, the stored side)
    teacher: Literal["same_geometry", "whole_image"] = "same_geometry"  # MICCAI 2023 | Ark+
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)  # RandomResizedCrop aspect range
    shift: float = 0.0625  # ShiftScaleRotate: max shift, fraction of the side
    scale: float = 0.1  # ShiftScaleRotate: max relative zoom
    rotate_deg: float = 10.0  # ShiftScaleRotate: max rotation
    shift_scale_rotate_p: float = 0.5  # ShiftScaleRotate: probability it is applied
    hflip_p: float = 0.0  # horizontal flip of the crop, before the rotation (Ark: none; fine-tuning: 0.5)
    photometric_p: float = 0.3  # one of brightness/contrast or gamma, student only
    brightness: float = 0.2  # photometric: max brightness shift
    contrast: float = 0.2  # photometric: max relative contrast change
    gamma: tuple[float, float] = (0.8, 1.2)  # photometric: gamma drawn from U(a, b)
    eval_crop: float = 224 / 256  # evaluation: centre crop of this share of the (resized) image
    ten_crop: bool = False  # evaluation: average over ten crops
    box_min_visible: float = 0.25  # boxes: one keeping less than this share of its warped area inside a view is dropped

    def validate(self) -> None:
        if self.image_size < 16 or self.load_size < self.image_size // 2:
            raise ValueError("image_size >= 16 and load_size >= image_size / 2 are required")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1 or not 0 < self.eval_crop <= 1:
            raise ValueError("crop_scale within (0, 1] and eval_crop within (0, 1] are required")
        for name in ("shift_scale_rotate_p", "photometric_p", "hflip_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability")
        if not 0 <= self.box_min_visible <= 1:
            raise ValueError(f"box_min_visible={self.box_min_visible} must be within [0, 1]")


@dataclass(kw_only=True)
class DataConfig:
    """The data plane: store, datasets in round order, label policies, views, loader."""

    store: StoreConfig = field(default_factory=StoreConfig)
    datasets: list[str] = field(default_factory=lambda: list(ARK6))  # round order of the cyclic schedule
    policies: dict[str, PolicyConfig] = field(default_factory=_ark_policies)  # per dataset
    default_policy: PolicyConfig = field(default_factory=PolicyConfig)  # for datasets not in `policies`
    # Per dataset, the classes its headline AUC (`auc/<split>/<dataset>/*`, and so the mean over
    # datasets that sweeps rank by) averages; a dataset not listed averages all its classes.
    metric_labels: dict[str, list[str]] = field(default_factory=_ark_metric_labels)  # headline AUC classes; unlisted: all
    views: ViewConfig = field(default_factory=ViewConfig)
    # What a round reads: `epoch` (Ark) = one pass over the dataset's train split in a seeded shard
    # order, every sample at most once and all but fewer than one global batch of them, ranks and
    # loader processes on disjoint ranges; `resampled` = shards drawn with replacement (about a
    # third of the split goes unseen in a round).
    sampling: Literal["epoch", "resampled"] = "epoch"  # a round is one pass (Ark) | shards drawn with replacement
    num_workers: int = 4  # loader processes per rank
    # Where JPEGs are decoded: `loader` (its processes, on the CPU) or `device` (the rank, in one
    # batched call on its GPU: nvJPEG; the loader reads headers only, for nodes with few CPU cores
    # per GPU). PNGs and unusual JPEGs are decoded by the loader either way (data/device_decode.py).
    decode: Literal["loader", "device"] = "loader"  # JPEG decode in the loader processes | on the rank's device
    prefetch_factor: int = 4  # batches each loader process keeps ready
    shuffle_buffer: int = 2000  # samples each loader stream mixes (across shards) before yielding them
    max_steps_per_round: int | None = None  # cap on a round's steps (huge datasets don't drown small ones)
    bad_sample_fraction: float = 0.01  # bad samples (undecodable, or in a bad shard) tolerated per loader stream ...
    bad_sample_min: int = 10  # ... but always at least this many
    # Samples no stream reads, training or evaluation: a file (local or s3://) of `<dataset>/<id>`
    # keys, one per line, e.g. the exclude.txt of `python -m shards overlap`. A round still has its
    # steps: a range short of samples reads on into the next, as after bad samples.
    exclude: str | None = None  # file of <dataset>/<id> keys left out of every stream (shards overlap writes one)
    # A training subset: a file (local or s3://) of `<dataset>/<id>` keys; each dataset named in it
    # trains on those samples only (its rounds are as long as they make), evaluation is unchanged.
    # `finetune.train_subset` writes one. The pass still reads the split's shards, skipping the rest.
    train_only: str | None = None  # file of <dataset>/<id> keys: the listed datasets train on these only

    def validate(self) -> None:
        if not self.datasets or len(set(self.datasets)) != len(self.datasets):
            raise ValueError("data.datasets must list each dataset once")
        if self.sampling not in ("epoch", "resampled"):
            raise ValueError(f"data.sampling={self.sampling!r} must be epoch or resampled")
        if self.decode not in ("loader", "device"):
            raise ValueError(f"data.decode={self.decode!r} must be loader or device")
        if self.num_workers < 0 or self.prefetch_factor < 1 or self.shuffle_buffer < 1:
            raise ValueError("data: num_workers >= 0, prefetch_factor >= 1 and shuffle_buffer >= 1 are required")
        if self.max_steps_per_round is not None and self.max_steps_per_round < 1:
            raise ValueError("data.max_steps_per_round must be at least 1")
        if not 0 <= self.bad_sample_fraction < 1 or self.bad_sample_min < 0:
            raise ValueError("data.bad_sample_fraction must be in [0, 1) and bad_sample_min >= 0")

    def policy(self, dataset: str) -> PolicyConfig:
        return self.policies.get(dataset, self.default_policy)

"""Label policies: a sample's raw facts (DESIGN 2.2) -> (target, mask) for its dataset's head.

Facts per class are 1, 0, -1 (uncertain) or None (not mentioned); multi-reader sources carry each
reader's votes instead. A masked label has mask 0 and must not reach the loss.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ark_dist.data.config import PolicyConfig


class LabelPolicy:
    """Targets for one dataset: its head's label names and task (from the manifest) and a policy."""

    def __init__(self, *, labels: list[str], task: str, policy: PolicyConfig, seed: int):
        self.labels, self.task, self.policy, self.seed = list(labels), task, policy, seed

    def lsr_value(self, sample_id: str, index: int) -> float:
        """U(a, b) drawn once per (image, class) and reproducibly: a hash, not a stream position."""
        digest = hashlib.blake2b(f"{self.seed}/{sample_id}/{index}".encode(), digest_size=8).digest()
        unit = int.from_bytes(digest, "little") / 2**64
        low, high = self.policy.lsr_range
        return low + (high - low) * unit

    def _fact(self, facts: dict, name: str):
        """The adjudicated label where the file gives one (nih_google has both); else the readers'
        votes, by `policy.readers`. A vote of -1 (a reader who hedged) is neither: `any` is 1 on a
        1, else -1 on a -1; `majority` is 1 when more than half say 1, else -1 when the 1s and -1s
        together are more than half."""
        if facts.get("labels") is not None or not facts.get("readers"):
            return facts["labels"].get(name)
        votes = [v[name] for v in facts["readers"].values()]
        ones, hedged = votes.count(1), votes.count(-1)
        if self.policy.readers == "any":
            return 1 if ones else -1 if hedged else 0
        return 1 if ones * 2 > len(votes) else -1 if (ones + hedged) * 2 > len(votes) else 0

    def __call__(self, facts: dict) -> tuple[np.ndarray, np.ndarray]:
        """-> (target, mask), each float32 of shape (num_labels,). Multi-class heads get a one-hot
        target (cross-entropy with class probabilities) and an all-ones or all-zeros mask."""
        target = np.zeros(len(self.labels), dtype=np.float32)
        mask = np.ones(len(self.labels), dtype=np.float32)
        for i, name in enumerate(self.labels):
            value = self._fact(facts, name)
            if value == 1:
                target[i] = 1.0
            elif value == -1:
                rule = self.policy.uncertain
                if rule == "ones":
                    target[i] = 1.0
                elif rule == "lsr":
                    target[i] = self.lsr_value(facts["id"], i)
                elif rule == "masked":
                    mask[i] = 0.0
            elif value is None and self.policy.blank == "masked":
                mask[i] = 0.0
        if self.task == "multiclass" and (target.sum() != 1.0 or mask.min() == 0.0):
            mask[:] = 0.0  # no single known class: the sample teaches this head nothing
        return target, mask

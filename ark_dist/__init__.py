"""ark-dist training: streams the shards of `shards/` to Ray Train workers running DeepSpeed.

`ark_dist.load(folder_or_hub_id)` gives a released model (`launch.py release`) with `predict` and
`embed` (ark_dist/predict.py)."""


def load(source: str, *, device: str = "cpu"):
    """A release folder or `hf-hub:org/name` as a model with `predict(images)` and `embed(images)`."""
    from ark_dist.predict import load as load_release

    return load_release(source, device=device)

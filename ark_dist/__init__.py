"""ark-dist training: streams the shards of `shards/` to Ray Train workers running DeepSpeed."""

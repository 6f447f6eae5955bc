"""Ark on Ray Train + DeepSpeed: the driver (`run.fit`) and the per-worker loop (`worker`)."""

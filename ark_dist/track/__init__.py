"""Run tracking: the run folder's metrics file and W&B on world rank 0."""

from ark_dist.track.config import TrackingConfig

__all__ = ["TrackingConfig"]

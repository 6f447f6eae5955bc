"""Ray Tune sweeps over the config tree."""

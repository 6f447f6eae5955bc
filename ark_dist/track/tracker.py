"""W&B behind a two-method interface. The trainer opens a tracker on every Ray Train worker; only
world rank 0 gets one that writes, the others get a no-op, so no caller branches on the rank.

Offline runs (no API key, or `tracking.wandb: offline`) land in `<dir>/wandb/offline-run-*`;
`wandb sync <that folder>` uploads them later. A restarted run reuses its W&B run id.
"""

from __future__ import annotations

import configparser
import logging
import netrc
import numbers
import os
import re
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from ark_dist.config import Config, to_dict
from ark_dist.track.config import TrackingConfig

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "ark-dist"
DEFAULT_BASE_URL = "https://api.wandb.ai"
REDACTED = "<redacted>"
# A config key whose name contains one of these (case, "_" and "-" ignored) holds a secret.
SECRET_WORDS = ("secret", "token", "password", "passwd", "apikey", "accesskey", "credential",
                "privatekey", "signature")
# scheme://user:pass@ up to the authority's last "@" (a raw "@" in a password is common)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]*@")
_QUERY_PARAM = re.compile(r"(?P<sep>[?&])(?P<name>[^=&#\s]+)=(?P<value>[^&#\s]*)")  # ?name=value / &name=value
# wandb's own spellings of the modes, as the WANDB_MODE variable may hold them.
_ENV_MODES = {"online": "online", "run": "online", "shared": "online",
              "offline": "offline", "dryrun": "offline", "disabled": "disabled"}

Mode = Literal["online", "offline", "disabled"]


class Tracker(Protocol):
    """Where the trainer's metrics go besides the run folder."""

    def log(self, metrics: dict[str, float], *, step: int) -> None:
        """Record one row of namespaced metrics (`loss/<dataset>`, `lr`, ...) at optimizer step `step`."""

    def finish(self) -> None:
        """Flush and close; safe to call more than once."""


class NullTracker:
    """What ranks other than 0 (and `tracking.wandb: disabled`) get: drops everything."""

    def log(self, metrics: dict[str, float], *, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    """One W&B run, opened on world rank 0 by `open_tracker`."""

    def __init__(self, run) -> None:
        self._run = run
        self._dropped: set[str] = set()  # keys already warned about

    def log(self, metrics: dict[str, float], *, step: int) -> None:
        if self._run is None:
            raise RuntimeError("log() after finish()")
        row = {}
        for key, value in metrics.items():
            if isinstance(value, numbers.Real):  # int, float, bool, numpy scalars; NaN and inf included
                row[key] = float(value)
            elif key not in self._dropped:
                self._dropped.add(key)
                log.warning("W&B: dropping metric %r: %s is not a number", key, type(value).__name__)
        # W&B ignores a step below its current one (a resumed run re-logging steps): expected, kept quiet.
        self._run.log(row, step=step)

    def finish(self) -> None:
        if self._run is None:
            return
        import wandb

        run, self._run = self._run, None
        run.finish(exit_code=0)
        # wandb 0.31's finish() can return before its service has written the run's `.wandb` file
        # (seen empty ~15% of the time); teardown waits for it. Rank 0's worker has no other run.
        wandb.teardown()


def open_tracker(cfg: Config, *, rank: int, run_dir: str, run_id: str) -> Tracker:
    """A W&B tracker on world rank 0, a `NullTracker` elsewhere or when W&B is disabled.

    `run_dir` is the run folder (local or s3://); `run_id` a stable id derived from it, so that a
    restarted run continues the same W&B run (online) or writes the same id again (offline).
    """
    mode = wandb_mode(cfg.tracking)
    if rank != 0 or mode == "disabled":
        return NullTracker()
    import wandb  # lazily: only rank 0 of a tracked run pays for it

    tracking = cfg.tracking
    run = wandb.init(
        mode=mode,
        dir=wandb_dir(tracking, run_dir=run_dir),  # W&B creates it
        id=run_id,
        resume="allow",
        project=tracking.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=tracking.entity or os.environ.get("WANDB_ENTITY") or None,
        group=tracking.group or os.environ.get("WANDB_RUN_GROUP") or None,
        name=tracking.run_name or os.environ.get("WANDB_NAME") or cfg.train.name,
        tags=list(tracking.tags) or None,
        config=without_secrets(to_dict(cfg)),
        reinit="create_new",  # leaves wandb's global run alone; a second tracker in one process is a new run
        settings=wandb.Settings(
            silent=True,  # no banners in the workers' logs; we log the one line that matters below
            console="off",  # no stdout/stderr capture: a Ray worker's output may carry secrets
            save_code=False, disable_code=True, disable_git=True, disable_job_creation=True,
            x_disable_meta=True,  # metadata holds sys.argv, which may carry credentials in overrides
            x_disable_machine_info=True,
            x_disable_stats=True,  # the system sampler probes cloud metadata endpoints over the network
            x_save_requirements=False,
        ),
    )
    if mode == "offline":
        log.info("W&B offline run %s in %s; upload it with `wandb sync %s`", run_id, run.dir, Path(run.dir).parent)
    else:
        log.info("W&B run %s: %s", run_id, run.url)
    return WandbTracker(run)


def wandb_mode(tracking: TrackingConfig) -> Mode:
    """`tracking.wandb`, with `auto` resolved: WANDB_MODE when set, else online when an API key is
    configured (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, or the netrc entry `wandb login` writes),
    else offline. Reads no network."""
    if tracking.wandb != "auto":
        return tracking.wandb
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        if env_mode not in _ENV_MODES:
            raise ValueError(f"WANDB_MODE={env_mode!r} is not one of {', '.join(_ENV_MODES)}")
        return _ENV_MODES[env_mode]
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "online"
    return "online" if _netrc_has_key(_base_url()) else "offline"


def _base_url() -> str:
    """The W&B server: WANDB_BASE_URL, else the `base_url` that `wandb login --host` saved, else W&B's cloud."""
    if url := os.environ.get("WANDB_BASE_URL"):
        return url
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
    settings = configparser.ConfigParser()
    settings.read(config_dir / "settings")  # a missing file reads as empty
    return settings.get("default", "base_url", fallback=DEFAULT_BASE_URL)


def _netrc_has_key(base_url: str) -> bool:
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    if not path.is_file():
        return False
    try:
        entry = netrc.netrc(path).authenticators(urlsplit(base_url).netloc)
    except netrc.NetrcParseError as exc:
        log.warning("W&B: cannot read %s (%s); treating it as holding no API key", path, exc)
        return False
    return bool(entry and entry[2])


def wandb_dir(tracking: TrackingConfig, *, run_dir: str) -> str:
    """The folder W&B writes under (it adds `wandb/`): `tracking.dir`, else the run folder when it
    is local, else WANDB_DIR, else the working directory."""
    if tracking.dir:
        return tracking.dir
    if "://" not in run_dir:
        return run_dir
    return os.environ.get("WANDB_DIR") or os.getcwd()


def without_secrets(data: Any) -> Any:
    """A copy of plain config data fit to log: values under secret-looking keys replaced by
    `<redacted>`, and credentials removed from URLs in strings (`s3://key:secret@bucket` ->
    `s3://bucket`, `?X-Amz-Signature=...` -> `?X-Amz-Signature=<redacted>`)."""
    if isinstance(data, dict):
        return {key: REDACTED if _looks_secret(str(key)) else without_secrets(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [without_secrets(value) for value in data]
    if isinstance(data, str):
        return _scrub_urls(data)
    return data


def _looks_secret(key: str) -> bool:
    flat = key.lower().replace("_", "").replace("-", "")
    return any(word in flat for word in SECRET_WORDS)


def _scrub_urls(text: str) -> str:
    text = _USERINFO.sub(r"\g<scheme>", text)
    return _QUERY_PARAM.sub(
        lambda m: f"{m['sep']}{m['name']}={REDACTED if _looks_secret(m['name']) else m['value']}", text)

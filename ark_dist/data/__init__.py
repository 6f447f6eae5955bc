"""The data plane: shards in a store -> batches on every training rank (issue 3).

Public API: `DataConfig`, `Store`, `read_manifest`, `canvas_warnings`, `RunLoader` (one loader for
a whole run), `train_loader`/`mixed_loader` (one round), `EvalLoader`, `Cursor`, `round_steps`,
`render`/`render_eval` (views on the training device), `canvases` (a batch's images on the device,
JPEGs decoded there under `data.decode: device`), `DataMeter`.
"""

from ark_dist.data.config import DataConfig, PolicyConfig, StoreConfig, ViewConfig
from ark_dist.data.device_decode import canvases
from ark_dist.data.manifest import canvas_warnings, dataset_entry, read_manifest
from ark_dist.data.meter import DataMeter
from ark_dist.data.remote import ShardReadError, Store
from ark_dist.data.runloader import RunLoader
from ark_dist.data.stages import DataError
from ark_dist.data.evalstream import EvalLoader
from ark_dist.data.stream import Cursor, mixed_loader, round_steps, train_loader
from ark_dist.data.views import render, render_eval

__all__ = ["DataConfig", "PolicyConfig", "StoreConfig", "ViewConfig", "Store", "ShardReadError", "DataError",
           "read_manifest", "dataset_entry", "canvas_warnings", "RunLoader", "train_loader", "mixed_loader",
           "EvalLoader", "Cursor", "round_steps", "render", "render_eval", "canvases", "DataMeter"]

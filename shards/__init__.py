"""Public chest X-ray datasets, in their native layouts, to WebDataset shards plus a manifest.

`python -m shards --help` lists the commands. The manifest (`shards.manifest`) and the sample
format (`shards.samples`) are the contract with the trainer; everything else here is private.
"""

__version__ = "0.1.0"

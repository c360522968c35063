"""Shards: WebDataset tar sets cut from a volume store, under one versioned manifest.

Modules: ``tario`` (tar members and ``.npy``), ``manifest`` (the shard-set
contract, read and written only there), ``shardset`` (per-case parts, assembly,
incremental rebuilds, URL outputs), ``cubepaths`` (the cube grid and path kinds:
U, straight, block), ``pretrain`` (path samples around candidates) and
``labelled`` (labelled crops and MedMNIST ``.npz`` splits).
"""

"""The input pipeline: shard streaming, decoding, augmentation, the PyTorch dataset, synthetic shards."""

"""Generation from trained decoders: a KV-cached sampler over the training parameters."""

"""xgen-pipeline library: curation, training, post-training and evaluation of xGen-small style models."""

__version__ = "0.1.0"

"""AdamW with global-norm gradient clipping; norm scales are not decayed."""

from __future__ import annotations

import jax
import optax


def decay_mask(params):
    """True for weight matrices and embeddings, False for RMSNorm scales."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) != "scale", params
    )


def make_optimizer(schedule, *, b1: float, b2: float, eps: float, weight_decay: float,
                   grad_clip: float) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask),
    )

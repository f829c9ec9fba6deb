"""Model architectures by name: the paper's Table 1 presets plus small ones that run on a CPU."""

from __future__ import annotations

import dataclasses

from xgen_core.errors import XgenError


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Shape of a Llama-2-style decoder (no biases, RMSNorm, SwiGLU, GQA, RoPE)."""

    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float
    tie_embeddings: bool
    max_seq_len: int
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.n_q_heads % self.n_kv_heads:
            raise XgenError(
                f"model {self.name}: {self.n_q_heads} query heads is not a multiple of {self.n_kv_heads} KV heads"
            )

    @property
    def q_per_kv(self) -> int:
        return self.n_q_heads // self.n_kv_heads


# Table 1 lists "Heads (Q/KV) 8/32"; with head size 128 and embedding 4,096 that only makes sense as
# 32 query heads sharing 8 key/value heads (32 x 128 = 4,096), so the presets read it that way.
# Sequence length and theta are the pre-training values of section 3.1 (4,096 tokens, theta 10,000);
# length extension (section 3.4) raises them later.
PRESETS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="xgen-small-4b", vocab_size=102_400, d_model=4096, n_layers=28, n_q_heads=32, n_kv_heads=8,
            head_dim=128, mlp_dim=8192, rope_theta=10_000.0, tie_embeddings=True, max_seq_len=4096,
        ),
        ModelSpec(
            name="xgen-small-9b", vocab_size=102_400, d_model=4096, n_layers=45, n_q_heads=32, n_kv_heads=8,
            head_dim=128, mlp_dim=14_336, rope_theta=10_000.0, tie_embeddings=False, max_seq_len=4096,
        ),
        # ~100M parameters (101.7 M): the benchmark's mid-size model, shaped like the xGen-small family
        # (head size 128, 4 query heads per KV head, MLP 3.5 x d_model as in the 9B) and wide rather than
        # deep, so its matmuls are large enough for a CPU's matrix units (docs/benchmarks.md, "Train
        # step"). It replaced d_model 768 x 12 layers (12/4 heads of 64, MLP 2048; 100.7 M), which
        # trained 1.3x slower per FLOP on the bench machine.
        ModelSpec(
            name="small-100m", vocab_size=32_768, d_model=1024, n_layers=5, n_q_heads=8, n_kv_heads=2,
            head_dim=128, mlp_dim=3584, rope_theta=10_000.0, tie_embeddings=True, max_seq_len=1024,
        ),
        # ~3M parameters: pretrains on the sample corpus in CPU minutes.
        ModelSpec(
            name="tiny", vocab_size=2048, d_model=256, n_layers=4, n_q_heads=8, n_kv_heads=2,
            head_dim=32, mlp_dim=768, rope_theta=10_000.0, tie_embeddings=True, max_seq_len=256,
        ),
        # Tests: compiles in about a second.
        ModelSpec(
            name="micro", vocab_size=512, d_model=64, n_layers=2, n_q_heads=4, n_kv_heads=2,
            head_dim=16, mlp_dim=128, rope_theta=10_000.0, tie_embeddings=False, max_seq_len=128,
        ),
    )
}


def get_preset(name: str, **overrides) -> ModelSpec:
    """The named preset, with fields replaced by `overrides` (e.g. vocab_size from the trained tokenizer)."""
    if name not in PRESETS:
        raise XgenError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    spec = PRESETS[name]
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelSpec)}
    if unknown:
        raise XgenError(f"unknown model field(s) {sorted(unknown)} for preset {name!r}")
    return dataclasses.replace(spec, **overrides) if overrides else spec

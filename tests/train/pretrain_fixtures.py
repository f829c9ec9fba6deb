"""Shared pieces of the pretraining tests (a plain module so subprocesses can import it too)."""

from xgen_core.config import MeshConfig, ModelConfig, TrainConfig, TrainRunConfig

STAGES = ("stage1", "stage2", "stage3", "stage4")
STAGE_TOKENS = {"stage1": 512, "stage2": 1024, "stage3": 1024, "stage4": 512}


def synthetic_documents(count: int, offset: int = 0) -> list[str]:
    """Small, learnable documents: code-like functions and worked sums."""
    docs = []
    for i in range(offset, offset + count):
        a, b = i % 17, (i * 7) % 23
        if i % 2:
            docs.append(f"def add_{a}_{b}(x):\n    return x + {a} + {b}\n")
        else:
            docs.append(f"Question: what is {a} plus {b}? Answer: {a} plus {b} is {a + b}.")
    return docs


MICRO_MODEL = ModelConfig(preset="micro", attention_impl="auto", compute_dtype="float32",
                          param_dtype="float32", remat=False, scan_layers=True)


def micro_train(**changes) -> TrainConfig:
    """The `train` section of the micro runs: what decides the trained model."""
    settings = dict(batch_size=4, grad_accum_steps=2, peak_lr=3e-3, slow_decay_end_ratio=0.3, final_lr_ratio=0.0,
                    weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0, seed=0)
    return TrainConfig(**{**settings, **changes})


def micro_runtime(mesh: tuple[int, int, int] = (1, -1, 1), **changes) -> TrainRunConfig:
    """The `train_run` section of the micro runs: how they execute."""
    settings = dict(max_steps=None, checkpoint_every=3, keep_checkpoints=2, eval_every=5, eval_batches=2,
                    spike_factor=3.0, spike_warmup_steps=5, peak_flops_per_device=1e11,
                    mesh=MeshConfig(data=mesh[0], fsdp=mesh[1], tensor=mesh[2], distributed=False))
    return TrainRunConfig(**{**settings, **changes})

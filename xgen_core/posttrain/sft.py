"""The `sft` stage: supervised fine-tuning with the loss on assistant tokens only (paper section 4.1).

Conversations are rendered with the chat template, packed whole into rows with segment ids (attention and loss
never cross an example), and trained for `epochs` passes with a warm-up then cosine LR. Held-out examples are
scored per category (general / safety / reasoning) before the first step and every eval_every steps.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xgen_core.config import MeshConfig, PosttrainRunConfig, SftConfig, TrainConfig
from xgen_core.errors import XgenError
from xgen_core.posttrain.chat import ChatTemplate, pack_examples, sft_targets
from xgen_core.posttrain.data import Quarantine, generated_sft_rows, is_heldout, load_rows
from xgen_core.posttrain.engine import Trainer, last_step_of, load_policy, optimizer, warmup_cosine


def assistant_loss(logits, rows: dict):
    """(summed cross-entropy over assistant target tokens, their count) of packed rows."""
    batch = sft_targets(rows)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return jnp.sum(losses * batch["weights"]), jnp.sum(batch["weights"])


def forward(model, params, rows: dict):
    batch = sft_targets(rows)
    return model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])


def sft_loss(model):
    """loss_fn(params, rows) -> (mean assistant-token loss, metrics) of the SFT step."""

    def loss_fn(params, rows):
        loss_sum, count = assistant_loss(forward(model, params, rows), rows)
        return loss_sum / jnp.maximum(count, 1.0), {"assistant_tokens": count}

    return loss_fn


def compile_target(cfg, devices, n_layers: int | None = None):
    """The SFT step for `xgen train compile`: batch_size packed rows of seq_len + 1 tokens."""
    from xgen_core.posttrain.engine import compile_target as posttrain_target

    settings = cfg.sft
    shape = (settings.batch_size, settings.seq_len + 1)
    return posttrain_target(cfg, devices, n_layers, "sft", sft_loss,
                            {name: shape for name in ("tokens", "segment_ids", "positions", "loss_mask")},
                            settings.batch_size * settings.seq_len, settings.weight_decay)


def render_rows(rows: list[dict], template: ChatTemplate, seq_len: int, quarantine: Quarantine):
    """(ids, loss mask, category) of each conversation that fits a packed row."""
    rendered = []
    for index, row in enumerate(rows):
        ids, mask = template.render(row["messages"])
        if len(ids) > seq_len + 1:
            quarantine.add("too_long", f"row {index}", {"category": row.get("category"), "tokens": len(ids)})
            continue
        rendered.append((ids, mask, row.get("category") or "uncategorized"))
    return rendered


def step_rows(packed: dict, batch_size: int, seed: int, step: int) -> dict:
    """The rows of `step`: epoch e reads the rows in a permutation seeded by (seed, e), `batch_size` at a time."""
    n_rows = len(packed["tokens"])
    epoch, offset = divmod(step * batch_size, n_rows)
    indices = []
    while len(indices) < batch_size:
        order = np.random.default_rng([seed, epoch]).permutation(n_rows)
        indices.extend(order[offset: offset + batch_size - len(indices)])
        epoch, offset = epoch + 1, 0
    return {name: value[np.asarray(indices)] for name, value in packed.items()}


def padded_batches(packed: dict, batch_size: int, pad_id: int) -> list[dict]:
    """Held-out rows in batches of `batch_size`; the last batch filled with empty rows (no loss)."""
    count = len(packed["tokens"])
    total = max(batch_size, math.ceil(count / batch_size) * batch_size)
    full = {name: np.zeros((total, value.shape[1]), np.int32) for name, value in packed.items()}
    full["tokens"][:] = pad_id
    for name, value in packed.items():
        full[name][:count] = value
    return [{name: value[i:i + batch_size] for name, value in full.items()} for i in range(0, total, batch_size)]


def sft(init_uri: str, out_uri: str, settings: SftConfig, train: TrainConfig, mesh: MeshConfig,
        run: PosttrainRunConfig, expected_model: dict | None = None, log=print, on_step=None) -> dict:
    policy = load_policy(init_uri, expected_model)
    template = ChatTemplate(policy.tokenizer, policy.tokenizer_config)
    quarantine = Quarantine()
    generate = settings.generate
    rows = (load_rows("sft", settings.data, quarantine) if settings.data else
            generated_sft_rows(settings.seed, generate.model_dump(), generate.max_operand, generate.code_share))
    examples = render_rows(rows, template, settings.seq_len, quarantine)
    train_examples = [e for i, e in enumerate(examples) if not is_heldout(i, settings.seed, settings.heldout_fraction)]
    heldout_examples = [e for i, e in enumerate(examples) if is_heldout(i, settings.seed, settings.heldout_fraction)]
    if not train_examples or not heldout_examples:
        raise XgenError(f"sft: {len(train_examples)} training and {len(heldout_examples)} held-out examples after "
                        f"quarantine ({dict(quarantine.counts)}): both need at least one")
    pad_id = template.pad_id
    packed = pack_examples([(ids, mask) for ids, mask, _ in train_examples], settings.seq_len, pad_id)
    if len(packed["tokens"]) < settings.batch_size:
        log(f"sft: {len(packed['tokens'])} packed rows, fewer than a batch of {settings.batch_size}: rows repeat")
    categories = sorted({c for _, _, c in examples})
    heldout = {category: padded_batches(pack_examples([(i, m) for i, m, c in heldout_examples if c == category],
                                                      settings.seq_len, pad_id), settings.batch_size, pad_id)
               for category in categories if any(c == category for _, _, c in heldout_examples)}

    total_steps = max(1, math.ceil(settings.epochs * len(packed["tokens"]) / settings.batch_size))
    schedule = warmup_cosine(settings.peak_lr, int(settings.warmup_fraction * total_steps), total_steps,
                             settings.final_lr_ratio)
    tx = optimizer(train, schedule, settings.weight_decay)
    trainer = Trainer(policy, tx, schedule, mesh, run, out_uri, settings.seed, log)
    model = policy.model

    loss_fn = sft_loss(model)
    example = step_rows(packed, settings.batch_size, settings.seed, 0)
    train_step = trainer.compile_step(loss_fn, example)
    eval_step = trainer.compile_eval(lambda params, rows: assistant_loss(forward(model, params, rows), rows), example)

    def do_step(state, step):
        rows = step_rows(packed, settings.batch_size, settings.seed, step)
        state, metrics = train_step(state, rows)
        return state, {**jax.device_get(metrics), "epoch": (step + 1) * settings.batch_size / len(packed["tokens"])}

    def evaluate(params):
        sums = {}
        for category, batches in heldout.items():
            totals = np.sum([np.asarray(jax.device_get(eval_step(params, b))) for b in batches], axis=0)
            sums[category] = totals
        overall = np.sum(list(sums.values()), axis=0)
        record = {"heldout_assistant_loss": float(overall[0] / max(overall[1], 1.0))}
        record.update({f"heldout_assistant_loss_{c}": float(s[0] / max(s[1], 1.0)) for c, s in sums.items()})
        return record

    last_step = last_step_of(total_steps, run)
    counts = _data_counts(train_examples, heldout_examples, packed, quarantine)
    trainer.write_json("data.json", counts)
    (trainer.out / "quarantine.jsonl").write_text(quarantine.jsonl())
    log(f"sft: {counts['train_examples']} examples in {counts['packed_rows']} rows, {counts['heldout_examples']} "
        f"held out, {sum(quarantine.counts.values())} quarantined; steps {trainer.start_step}->{last_step} of "
        f"{total_steps}")
    records = trainer.train(last_step, do_step, evaluate, on_step)
    evaluated = [r for r in records if "heldout_assistant_loss" in r]
    return {"counts": {**counts, "steps": last_step, "total_steps": total_steps},
            "complete": last_step >= total_steps,
            "metrics": {"heldout_before": _heldout(evaluated[0]), "heldout_after": _heldout(evaluated[-1]),
                        "train_loss_last": records[-1].get("loss")}}


def _heldout(record: dict) -> dict:
    return {k.removeprefix("heldout_"): v for k, v in record.items() if k.startswith("heldout_")}


def _data_counts(train_examples, heldout_examples, packed, quarantine: Quarantine) -> dict:
    by_category = {}
    for name, group in (("train", train_examples), ("heldout", heldout_examples)):
        for _, _, category in group:
            by_category[f"{name}_{category}"] = by_category.get(f"{name}_{category}", 0) + 1
    return {"train_examples": len(train_examples), "heldout_examples": len(heldout_examples),
            "packed_rows": int(len(packed["tokens"])), "assistant_tokens": int(packed["loss_mask"].sum()),
            "quarantined": sum(quarantine.counts.values()),
            **{f"quarantined_{k}": v for k, v in sorted(quarantine.counts.items())}, **dict(sorted(by_category.items()))}


def run(ctx) -> dict:
    """The `sft` stage: fine-tunes its `init` upstream (extend_128k, or --init URI) in its artifact directory."""
    cfg = ctx.cfg
    return sft(ctx.model_input(), ctx.output, cfg.sft, cfg.train, cfg.train_run.mesh, cfg.posttrain_run,
               expected_model=cfg.section_dump("model"), log=ctx.log)

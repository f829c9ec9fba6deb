"""Length extension (paper 3.4): the stages `extend_32k` and `extend_128k`.

Each stage is the pretraining loop (xgen_core/train/loop.py) continued from the previous stage's final parameters
with a fresh optimizer, at the stage's sequence length and RoPE base, under a short warm-up and a decay. Its data
is an extension mixture built from the curated corpus (the mixture artifact) after Gao et al.: documents of one
group (a site or repository: the `group_by` column) concatenated in corpus order into long documents, mixed by
characters with short documents of the late curriculum stages, then packed at the stage's length as pretraining
packs (each document its own segment: no attention crosses a document boundary). The packed mixture lives in
the stage's own artifact directory (`data/`), written once before training, so a resumed run reads the same rows.

With `retrieval_share` > 0, synthetic retrieval documents take that share of the characters: RULER's task
generators (xgen_core/evals/ruler_tasks.py) with their answers appended, keys and values drawn from the stage's
own seed (not RULER's evaluation seed), lengths spread over [`retrieval_min_tokens`, `retrieval_max_tokens`]. Not the
paper's recipe: at tiny scale no corpus document is long enough to need retrieval, and bench/length_extension.py
uses them to measure what the extension itself buys.

With `copy_share` > 0, synthetic copy documents take that share: 1 to `copy_pairs` lines "The number for {key} is:
{value}." (RULER's needle keys and 7-digit values, drawn from the stage's seed), repeated verbatim `copy_repeats`
times, then the same lines asked back in shuffled order. A 7-digit value is several tokens, so most of a document's second half is predictable only by
copying what came before (an induction mechanism), the capability RULER's exact match needs after the needle is
found. Also not the paper's recipe: bench/length_extension.py's teaching phase uses them.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator

from xgen_core.config import ExtendConfig, XgenConfig
from xgen_core.errors import XgenError
from xgen_core.storage import join, store_for
from xgen_core.tokens.corpus import (
    CLUSTER_COLUMN, TEXT_COLUMN, _iter_rows, curriculum_sources, is_heldout_cluster, iter_stage_clustered,
)
from xgen_core.tokens.shards import STAGES_FILE, pack_curriculum

DATA_DIR = "data"
JOINER = "\n\n"
RETRIEVAL_ANSWER_TOKENS = 16  # room left for the answer: RULER's niah generates up to 128 tokens
RETRIEVAL_HAYSTACK_DOCUMENTS = 200
MAX_SKIPPED_IN_A_ROW = 100


def long_documents(rows: Iterable[tuple[str, str, str]], target_chars: int,
                   heldout_fraction: float) -> Iterator[tuple[str, str]]:
    """(text, cluster id, group) documents -> (long text, cluster id): each group's documents concatenated in the
    order they come until `target_chars`. Held-out and training clusters are never mixed in one long document,
    which keeps the first member's cluster id, so packing's held-out split puts it on its members' side."""
    buffers: dict[tuple[str, bool], list[tuple[str, str]]] = {}
    sizes: dict[tuple[str, bool], int] = {}
    for text, cluster, group in rows:
        key = (str(group), is_heldout_cluster(cluster, heldout_fraction))
        buffers.setdefault(key, []).append((text, cluster))
        sizes[key] = sizes.get(key, 0) + len(text) + len(JOINER)
        if sizes[key] >= target_chars:
            yield _joined(buffers.pop(key))
            sizes.pop(key)
    for key in sorted(buffers):
        yield _joined(buffers[key])


def _joined(members: list[tuple[str, str]]) -> tuple[str, str]:
    return JOINER.join(text for text, _ in members), members[0][1]


def mix_by_characters(long: Iterable[tuple[str, str]], short: Iterable[tuple[str, str]],
                      long_share: float) -> Iterator[tuple[str, str]]:
    """Interleave two document streams so long documents hold `long_share` of the characters; ends when the
    stream whose turn it is runs out (the loader cycles the packed rows, so the share is what matters)."""
    long, short = iter(long), iter(short)
    long_chars = total_chars = 0
    while True:
        take_long = long_chars <= long_share * total_chars if 0 < long_share < 1 else long_share >= 1
        document = next(long if take_long else short, None)
        if document is None:
            return
        total_chars += len(document[0])
        long_chars += len(document[0]) if take_long else 0
        yield document


def retrieval_documents(count_tokens: Callable[[str], int], haystack_texts: list[str], settings: ExtendConfig,
                        seed: str) -> Iterator[tuple[str, str]]:
    """Endless (document, cluster id): a RULER task sample followed by its answer, tasks in turn, lengths in tokens
    drawn uniformly from [retrieval_min_tokens, retrieval_max_tokens]; the mix that reads them decides how many."""
    from xgen_core.evals.ruler_tasks import Skipped, TaskBuilder, build_corpus

    builder = TaskBuilder(count_tokens, build_corpus(haystack_texts, 0), seed, RETRIEVAL_ANSWER_TOKENS)
    lengths = random.Random(seed)
    skipped_in_a_row = 0
    for index in itertools.count():
        task = settings.retrieval_tasks[index % len(settings.retrieval_tasks)]
        length = lengths.randint(settings.retrieval_min_tokens, settings.retrieval_max_tokens)
        sample = builder.sample(task, length, index)
        if isinstance(sample, Skipped):
            skipped_in_a_row += 1
            if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                raise XgenError(f"retrieval documents: {MAX_SKIPPED_IN_A_ROW} samples in a row could not be built "
                                f"(last: {sample.task} at {sample.length} tokens: {sample.reason}); raise "
                                f"retrieval_min_tokens (now {settings.retrieval_min_tokens})")
            continue
        skipped_in_a_row = 0
        yield f"{sample.prompt} {' '.join(sample.references)}", f"retrieval-{seed}-{index}"


COPY_HEADER = "Remember these numbers."
COPY_RECALL = "Now the numbers again."
COPY_LINE = "The number for {key} is: {value}."
COPY_ANSWER = "The number for {key} is {value}."


def copy_documents(settings: ExtendConfig, seed: str) -> Iterator[tuple[str, str]]:
    """Endless (document, cluster id): 1 to `copy_pairs` distinct keys with random values, listed (1 +
    `copy_repeats` times: a verbatim repeat is all copying, the densest signal), then asked back in another order
    with their values; the same seed gives the same documents."""
    from xgen_core.evals.ruler_tasks import random_value

    for index in itertools.count():
        rng = random.Random(f"copy-{seed}-{index}")
        keys: dict[str, str] = {}
        for _ in range(rng.randint(1, settings.copy_pairs)):
            keys.setdefault(random_value("words", rng), random_value("numbers", rng))
        asked = list(keys)
        rng.shuffle(asked)
        listed = [COPY_LINE.format(key=key, value=value) for key, value in keys.items()]
        answered = [COPY_ANSWER.format(key=key, value=keys[key]) for key in asked]
        lines = [COPY_HEADER, *listed * (1 + settings.copy_repeats), COPY_RECALL, *answered]
        yield "\n".join(lines), f"copy-{seed}-{index}"


def extension_documents(mixture_uri: str, curriculum: list[str], settings: ExtendConfig, chars_per_token: float,
                        heldout_fraction: float, count_tokens: Callable[[str], int],
                        seed: str) -> Iterator[tuple[str, str]]:
    """The stage's mixture: long documents from every curriculum stage's documents (each once), mixed with the
    short documents (with the mixture's repeats) of `settings.short_stages`, and with retrieval documents when
    `retrieval_share` > 0 (their haystacks from training documents; `count_tokens` measures their length) and copy
    documents when `copy_share` > 0 (both shares of all the stage's characters)."""
    sources = curriculum_sources(mixture_uri, curriculum)
    columns = [TEXT_COLUMN, CLUSTER_COLUMN, settings.group_by]

    def corpus_rows():
        for uri in sources.values():
            yield from _iter_rows(uri, columns, expand_repeats=False)

    def short_rows():
        for name in settings.short_stages:
            yield from iter_stage_clustered(sources[name])

    target_chars = int(settings.long_doc_tokens * chars_per_token)
    long = long_documents(corpus_rows(), target_chars, heldout_fraction)
    mixed = mix_by_characters(long, short_rows(), settings.long_share)
    retrieval = None
    if settings.retrieval_share:
        training = (text for text, cluster, _ in corpus_rows() if not is_heldout_cluster(cluster, heldout_fraction))
        haystack = list(itertools.islice(training, RETRIEVAL_HAYSTACK_DOCUMENTS))
        retrieval = retrieval_documents(count_tokens, haystack, settings, seed)
    return with_synthetic(mixed, retrieval, settings, seed)


def with_synthetic(corpus: Iterable[tuple[str, str]], retrieval: Iterable[tuple[str, str]] | None,
                   settings: ExtendConfig, seed: str) -> Iterable[tuple[str, str]]:
    """Corpus documents mixed with copy documents at `copy_share` and retrieval documents at `retrieval_share`,
    both of all the characters (copy documents take their share of what retrieval leaves)."""
    mixed = corpus
    if settings.copy_share:
        left = 1 - settings.retrieval_share
        mixed = mix_by_characters(copy_documents(settings, seed), mixed, min(1.0, settings.copy_share / left))
    if settings.retrieval_share:
        mixed = mix_by_characters(retrieval, mixed, settings.retrieval_share)
    return mixed


def extension_train_config(cfg: XgenConfig, settings: ExtendConfig):
    """The pretraining `train` section with the stage's batch and LR: optimizer settings and seed are kept."""
    return cfg.train.model_copy(update={
        "batch_size": settings.batch_size, "grad_accum_steps": settings.grad_accum_steps,
        "peak_lr": settings.peak_lr, "final_lr_ratio": settings.final_lr_ratio,
    })


def _pack_extension_data(ctx, stage: str, settings: ExtendConfig, tokenizer, tokenizer_config) -> str:
    data_uri = join(ctx.output, DATA_DIR)
    if store_for(data_uri).exists(join(data_uri, STAGES_FILE)):  # written last: the data is complete
        return data_uri
    cfg = ctx.cfg
    documents = extension_documents(ctx.inputs["mixture"], list(cfg.curriculum()), settings,
                                    cfg.mixture.chars_per_token, cfg.pack.heldout_fraction,
                                    count_tokens=lambda text: 1 + len(tokenizer.encode(text).ids),
                                    seed=f"{stage}-{cfg.train.seed}")
    packed = pack_curriculum(tokenizer, tokenizer_config, {stage: documents}, data_uri, settings.seq_len,
                             cfg.pack.heldout_fraction, cfg.pack.rows_per_shard, settings.whole_documents)
    entry = packed["stages"][0]
    ctx.log(f"{stage} mixture: {entry['train']['rows']} train rows of {settings.seq_len} tokens "
            f"({entry['train']['tokens']:,} tokens), {entry['heldout']['rows']} held-out rows")
    return data_uri


def _run(ctx, stage: str, previous: str) -> dict:
    from xgen_core.tokens.tokenizer import load_tokenizer
    from xgen_core.train.loop import Continuation, pretrain

    cfg = ctx.cfg
    settings: ExtendConfig = getattr(cfg, stage)
    tokenizer, tokenizer_config = load_tokenizer(ctx.inputs["tokenizer"])
    data_uri = _pack_extension_data(ctx, stage, settings, tokenizer, tokenizer_config)
    continuation = Continuation(init_run_uri=ctx.inputs[previous], rope_theta=settings.rope_theta,
                                max_seq_len=settings.max_seq_len, warmup_steps=settings.warmup_steps,
                                eval_rows=settings.eval_rows)
    model_config = cfg.model.model_copy(update={"attention_impl": settings.attention_impl})
    summary = pretrain(data_uri, ctx.output, model_config, extension_train_config(cfg, settings), cfg.train_run,
                       {stage: settings.tokens}, vocab_size=tokenizer_config["vocab_size"], log=ctx.log,
                       continuation=continuation, context_parallel=cfg.train_run.context_parallel.get(stage, 1))
    return {
        "counts": {"steps": summary["last_step"], "stage_steps": summary["total_steps"]},
        "complete": summary["last_step"] >= summary["total_steps"],
        "metrics": {key: summary[key] for key in ("heldout_loss", "unigram_baseline_loss", "flops_per_token")}
        | {"seq_len": settings.seq_len, "rope_theta": settings.rope_theta},
    }


def run_32k(ctx) -> dict:
    """The `extend_32k` stage: from pretrain's final parameters."""
    return _run(ctx, "extend_32k", previous="pretrain")


def run_128k(ctx) -> dict:
    """The `extend_128k` stage: from extend_32k's final parameters."""
    return _run(ctx, "extend_128k", previous="extend_32k")


def _compile_target(cfg, devices, n_layers, stage: str):
    """The stage's train step as `_run` builds it, over abstract inputs, for `xgen train compile`: the
    continuation's RoPE base and maximum length, the stage's batch and schedule, its context parallelism."""
    from xgen_core.train.loop import Continuation, train_step_compile_target
    from xgen_core.train.schedule import StagePlan

    settings: ExtendConfig = getattr(cfg, stage)
    continuation = Continuation(init_run_uri="", rope_theta=settings.rope_theta, max_seq_len=settings.max_seq_len,
                                warmup_steps=settings.warmup_steps, eval_rows=settings.eval_rows)
    tokens_per_step = settings.batch_size * settings.seq_len
    steps = max(1, -(-settings.tokens // tokens_per_step))
    plans = [StagePlan(stage, settings.tokens, settings.seq_len, 0, steps, tokens_per_step)]
    model_config = cfg.model.model_copy(update={"attention_impl": settings.attention_impl})
    return train_step_compile_target(
        cfg, devices, n_layers, model_config, extension_train_config(cfg, settings), plans, settings.seq_len,
        continuation=continuation, context_parallel=cfg.train_run.context_parallel.get(stage, 1),
        section=stage, context_key=f"train_run.context_parallel.{stage}")


def compile_target_32k(cfg, devices, n_layers: int | None = None):
    return _compile_target(cfg, devices, n_layers, "extend_32k")


def compile_target_128k(cfg, devices, n_layers: int | None = None):
    return _compile_target(cfg, devices, n_layers, "extend_128k")

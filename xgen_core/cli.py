"""The `xgen` command: one command per stage, from the stage table, plus tools; each group lists what it holds."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable

from xgen_core.errors import XgenError
from xgen_core.stages import STAGES, Stage, new_run_id

GROUPS = {  # the help lists each group's commands as registered; a group without commands is left out
    "data": "curation stages",
    "train": "training stages and tools",
    "eval": "evaluation stages and tools",
    "model": "model tools",
    "pipeline": "whole runs",
    "config": "the resolved configuration",
}

# Commands that are not stages: (group, name) -> (help, add_arguments, handler). Later modules register here.
EXTRA_COMMANDS: dict[tuple[str, str], tuple[str, Callable, Callable]] = {}


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    _configure_logging(getattr(args, "verbose", False))
    if not getattr(args, "handler", None):
        parser.parse_args([*(sys.argv[1:] if argv is None else argv), "--help"])
    try:
        args.handler(args)
    except XgenError as exc:
        _fail(args, f"error: {exc}", 2)
    except KeyboardInterrupt:
        _fail(args, "interrupted", 130)
    except Exception as exc:  # a bug or an environment problem: one line unless --debug
        first_line = (str(exc).strip().splitlines() or [""])[0][:500]
        _fail(args, f"error: {type(exc).__name__}: {first_line} (run with --debug for the traceback)", 1)


def _fail(args, message: str, code: int) -> None:
    if getattr(args, "debug", False):
        raise
    print(message, file=sys.stderr)
    sys.exit(code)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xgen", description="xgen-pipeline: raw crawl to a pretrained model.")
    _add_global_flags(parser)
    groups = parser.add_subparsers(title="groups", metavar="GROUP")
    group_parsers = {}
    for group, help_text in GROUPS.items():
        group_parser = groups.add_parser(group, help=help_text, description=help_text)
        _add_global_flags(group_parser)
        group_parsers[group] = group_parser.add_subparsers(title="commands", metavar="COMMAND")
    for stage in STAGES:
        _add_stage_command(group_parsers[stage.group], stage)
    _add_builtin_commands(group_parsers)
    for (group, name), (help_text, add_arguments, handler) in EXTRA_COMMANDS.items():
        command = group_parsers[group].add_parser(name, help=help_text, description=help_text)
        _add_global_flags(command)
        add_arguments(command)
        command.set_defaults(handler=handler)
    _list_commands_in_group_help(groups, group_parsers)
    return parser


def _list_commands_in_group_help(groups, group_parsers) -> None:
    """Each group's help names the commands it holds; groups holding none are dropped (argparse internals: the
    listed choices and the name map are the only places a sub-parser is recorded)."""
    for choice in list(groups._choices_actions):
        commands = [action.dest for action in group_parsers[choice.dest]._choices_actions]
        if not commands:
            groups._choices_actions.remove(choice)
            del groups._name_parser_map[choice.dest]
            continue
        choice.help = f"{GROUPS[choice.dest]}: {', '.join(commands)}"
        groups._name_parser_map[choice.dest].description = choice.help


def _add_global_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="more logging")
    # SUPPRESS and no defaults: a flag given at any level survives the sub-parsers (read with getattr).


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="tiny", help="config profile from configs/ (default: tiny)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seed=7")


def _add_stage_command(group_parser, stage: Stage) -> None:
    command = group_parser.add_parser(stage.command, help=stage.description, description=stage.description)
    if stage.command != stage.name:
        group_parser._name_parser_map[stage.name] = command  # the table's own name works too
    _add_global_flags(command)
    add_config_arguments(command)
    command.add_argument("--root", help="artifact root (overrides config `root`)")
    command.add_argument("--run-id", help="run to record this stage in (default: a new one)")
    if stage.upstream or stage.external_inputs:
        names = ["--input", *([stage.input_flag] if stage.input_flag else [])]
        command.add_argument(*names, dest="input", action="append", metavar="[UPSTREAM=]URI", help=_input_help(stage))
    if not stage.run_scoped:
        command.add_argument("--output", "--out", dest="output", metavar="URI", help="write exactly here")
    for flag in stage.flags:
        command.add_argument(flag.name, type=flag.type, help=f"{flag.help} (config {flag.key})")
    if stage.init_upstream:
        command.add_argument("--init", metavar="URI",
                             help=f"model artifact to start from (default: the {stage.init_upstream} artifact); "
                                  f"same as --input {stage.init_upstream}=URI")
    command.set_defaults(handler=lambda args: _run_stage_command(stage, args))


def _input_help(stage: Stage) -> str:
    named = f"UPSTREAM=URI reads URI as that upstream's artifact ({', '.join(stage.upstream)})"
    if stage.external_inputs:
        return f"input files or folders, repeatable (config {stage.external_inputs}); or {named}"
    if len(stage.upstream) == 1:
        return f"URI or {named}"
    return f"{named}, repeatable; upstreams not named come from the config"


def _run_stage_command(stage: Stage, args) -> None:
    from xgen_core.config import load_config
    from xgen_core.stages import run_stage

    overrides = list(args.overrides)
    if args.root:
        overrides.append(f"root={args.root}")
    for flag in stage.flags:
        value = getattr(args, flag.name.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides.append(f"{flag.key}={value}")
    cfg = load_config(args.profile, overrides)
    explicit_inputs = getattr(args, "input", None)
    if getattr(args, "init", None):
        explicit_inputs = [*(explicit_inputs or []), f"{stage.init_upstream}={args.init}"]
    outcome = run_stage(
        cfg,
        stage.name,
        args.run_id or new_run_id("cli"),
        explicit_inputs=explicit_inputs,
        output=getattr(args, "output", None),
    )
    state = "reused" if outcome.reused else "built"
    print(f"{stage.name}: {state} {outcome.uri}")


def _add_builtin_commands(group_parsers) -> None:
    show = group_parsers["config"].add_parser("show", help="print the fully resolved config, every stage included")
    _config_show_arguments(show)
    run = group_parsers["pipeline"].add_parser("run", help="run every stage in order, then the report")
    _add_global_flags(run)
    add_config_arguments(run)
    run.add_argument("--root", help="artifact root (overrides config `root`)")
    run.add_argument("--run-id", help="run id (default: a new one)")
    run.add_argument("--until", help="stop after this stage")
    run.set_defaults(handler=_run_pipeline_command)
    table = group_parsers["pipeline"].add_parser("stages", help="print the stage table")
    _add_global_flags(table)
    table.add_argument("--json", action="store_true")
    table.set_defaults(handler=_stages_command)


def _config_show_arguments(parser) -> None:
    _add_global_flags(parser)
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="JSON instead of YAML")
    parser.set_defaults(handler=_config_show_command)


def _config_show_command(args) -> None:
    import yaml

    from xgen_core.config import load_config

    cfg = load_config(args.profile, args.overrides).model_dump(mode="json")
    print(json.dumps(cfg, indent=2) if args.json else yaml.safe_dump(cfg, sort_keys=False), end="" if not args.json else "\n")


def _run_pipeline_command(args) -> None:
    from xgen_core.config import load_config
    from xgen_core.stages import run_pipeline

    overrides = list(args.overrides) + ([f"root={args.root}"] if args.root else [])
    cfg = load_config(args.profile, overrides)
    outcomes = run_pipeline(cfg, args.run_id or new_run_id("cli"), until=args.until)
    for outcome in outcomes:
        print(f"{outcome.stage:<16} {'reused' if outcome.reused else 'built':<7} {outcome.uri}")


def _stages_command(args) -> None:
    rows = [
        {"name": s.name, "group": s.group, "backend": s.backend, "resources": s.resources, "upstream": list(s.upstream),
         "entrypoint": s.entrypoint_module, "function": s.fn}
        for s in STAGES
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print(f"{row['name']:<16} {row['group']:<9} {row['backend']:<7} {row['resources']:<6} {row['entrypoint']:<26} "
              f"<- {', '.join(row['upstream']) or '-'}")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "jax", "absl", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _model_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help="model preset, e.g. xgen-small-4b, xgen-small-9b, tiny")
    parser.add_argument("--seq-len", type=int, help="sequence length for FLOPs per token (default: the preset's)")
    parser.add_argument("--json", action="store_true")


def _model_info_command(args) -> None:
    from xgen_core.model.info import model_info
    from xgen_core.model.presets import get_preset

    info = model_info(get_preset(args.preset), args.seq_len)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"preset                      {info['preset']}")
    print(f"parameters, total           {info['params_total']:,}")
    print(f"parameters, embedding       {info['params_embedding']:,}")
    print(f"parameters, non-embedding   {info['params_non_embedding']:,}")
    print(f"training FLOPs per token    {info['training_flops_per_token']:.4g}  (seq_len {info['seq_len']}, MaxText count)")


EXTRA_COMMANDS[("model", "info")] = (
    "parameter counts (from the model's own shapes) and training FLOPs per token of a preset",
    _model_info_arguments,
    _model_info_command,
)


def _model_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a pretrain (or later training stage) artifact URI")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of this call's sampling key")
    parser.add_argument("--json", action="store_true",
                        help='one line {"prompt", "completion", "prompt_ids", "completion_ids"}')


def _model_generate_command(args) -> None:
    from xgen_core.infer.generate_text import generate_text

    result = generate_text(args.model, args.prompt, max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                           temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(result["completion"])


EXTRA_COMMANDS[("model", "generate")] = (
    "continue a prompt with a trained model (its latest checkpoint and the tokenizer it was trained with)",
    _model_generate_arguments,
    _model_generate_command,
)


def _import_hf_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--from", dest="hf_dir", required=True, metavar="DIR",
                        help="a Hugging Face LlamaForCausalLM checkpoint folder (config.json, safetensors, tokenizer)")
    parser.add_argument("--out", required=True, metavar="URI", help="the new artifact (local path, file:// or gs://)")
    parser.add_argument("--preset", help="the preset to name the model by (default: the nearest to its shapes)")


def _import_hf_command(args) -> None:
    from xgen_core.config import load_config
    from xgen_core.interop.import_hf import import_hf, resume_command

    cfg = load_config(args.profile, args.overrides)
    manifest = import_hf(args.hf_dir, args.out, cfg, preset=args.preset, log=lambda message: None)
    model = manifest["config"]["model"]
    overrides = model.get("preset_overrides")
    print(f"imported {manifest['counts']['parameters']:,} parameters as preset {model['preset']}"
          + (f" with {json.dumps(overrides)}" if overrides else "") + f": {manifest['uri']}")
    print(f"generate:        xgen model generate --model {manifest['uri']} --prompt TEXT")
    print(f"train from it:   {resume_command(manifest)}")


EXTRA_COMMANDS[("model", "import-hf")] = (
    "a Hugging Face LlamaForCausalLM checkpoint as a step-0 training artifact (generate from it, train on from it)",
    _import_hf_arguments,
    _import_hf_command,
)


def _train_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--samples", type=int, default=256, help="evenly spaced (step, lr) samples in --json")
    parser.add_argument("--json", action="store_true", help='{"phases": [...], "samples": [[step, lr], ...]}')


def _train_schedule_command(args) -> None:
    from xgen_core.config import load_config
    from xgen_core.train.schedule import phase_table, schedule_for, schedule_samples

    cfg = load_config(args.profile, args.overrides)
    plans, schedule = schedule_for(cfg.curriculum(), cfg.pack.seq_len, cfg.train)
    phases = phase_table(plans, schedule)
    if args.json:
        print(json.dumps({"phases": phases, "samples": schedule_samples(plans, schedule, args.samples)}))
        return
    print(f"{'phase':<11} {'curriculum stage':<18} {'start step':>11} {'end step':>11} {'tokens':>19} "
          f"{'lr start':>10} {'lr end':>10}")
    for phase in phases:
        print(f"{phase['name']:<11} {phase['stage']:<18} {phase['start_step']:>11,} {phase['end_step']:>11,} "
              f"{phase['tokens']:>19,} {phase['lr_start']:>10.3e} {phase['lr_end']:>10.3e}")
    print(f"{plans[-1].end_step:,} steps of {cfg.train.batch_size} x {cfg.pack.seq_len} tokens")


EXTRA_COMMANDS[("train", "schedule")] = (
    "the LR schedule a pretraining run follows: one row per phase (curriculum stage, steps, tokens, LR)",
    _train_schedule_arguments,
    _train_schedule_command,
)


def _run_code_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--code", required=True, metavar="FILE", help="Python source, e.g. a model's completion")
    parser.add_argument("--tests", required=True, metavar="FILE", help="asserts or a `check` call, run after the code")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wall-clock limit (default: 10)")
    parser.add_argument("--json", action="store_true", help='{"passed", "status", "seconds", "output"}')
    parser.add_argument("--unsafe-no-isolation", action="store_true",
                        help="where namespaces are unavailable, run anyway with only rlimits and a time limit")


def _run_code_command(args) -> None:
    from pathlib import Path

    from xgen_core.errors import InputError
    from xgen_core.evals.sandbox import Limits, run_code

    if not args.timeout > 0:
        raise InputError(f"--timeout must be positive, got {args.timeout}")
    sources = {}
    for flag, path in (("--code", args.code), ("--tests", args.tests)):
        try:
            sources[flag] = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{flag} {path}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    result = run_code(sources["--code"], sources["--tests"], Limits(timeout_s=args.timeout),
                      allow_unisolated=args.unsafe_no_isolation)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"{result.status} in {result.seconds:.2f} s" + (f"\n{result.output}" if result.output else ""))
    if not result.passed:
        sys.exit(1)


EXTRA_COMMANDS[("eval", "run-code")] = (
    "run code followed by its tests in the sandbox (no network, no host files, bounded time, memory, processes)",
    _run_code_arguments,
    _run_code_command,
)


def _lm_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a pretrain (or later training stage) artifact URI")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names (or YAML files)")
    parser.add_argument("--include-path", metavar="DIR", help="a folder of extra lm-eval task YAMLs")
    parser.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's own)")
    parser.add_argument("--limit", type=float, help="examples per task (below 1: a share of them); for trials")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per forward / sampler call")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of sampled generations")
    parser.add_argument("--bootstrap-iters", type=int, default=100000, help="for standard errors (0: none)")
    parser.add_argument("--json", action="store_true", help="print lm-eval's results dict as one JSON line")


def _lm_eval_command(args) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    import xgen_core.evals.lm_eval_adapter  # noqa: F401  registers the "xgen" model

    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    results = simple_evaluate(model="xgen", model_args={"model": args.model, "batch_size": args.batch_size,
                                                        "seed": args.seed},
                              tasks=tasks, num_fewshot=args.num_fewshot, limit=args.limit, log_samples=False,
                              bootstrap_iters=args.bootstrap_iters,
                              task_manager=TaskManager(include_path=args.include_path))
    if args.json:
        print(json.dumps({"results": results["results"], "n-samples": results.get("n-samples", {})}, default=str))
    else:
        print(make_table(results))


EXTRA_COMMANDS[("eval", "lm-eval")] = (
    "score a trained model on lm-evaluation-harness tasks (loglikelihood, rolling, generate_until)",
    _lm_eval_arguments,
    _lm_eval_command,
)


def _train_compile_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--stage", required=True, help="training stage whose step to compile, e.g. pretrain")
    parser.add_argument("--topology", required=True,
                        help="TPU slice: v5p:8x8x16 (1,024 chips), v6e:16x16, v5e:16x16, v5p:2x2x1 ...")
    parser.add_argument("--memory-only", action="store_true",
                        help="skip the FLOPs count (it compiles one or two more copies of the step)")
    parser.add_argument("--json", action="store_true",
                        help='{"stage", "profile", "topology", "devices", "fits", "bytes", "hbm_bytes", '
                             '"flops_per_step", "model_flops_per_step", "tokens_per_step", ...}')


def _train_compile_command(args) -> None:
    from xgen_core.config import load_config
    from xgen_core.train.compile import compile_stage, format_report

    cfg = load_config(args.profile, args.overrides)
    report = compile_stage(cfg, args.profile, args.stage, args.topology, count_flops=not args.memory_only)
    print(json.dumps(report) if args.json else format_report(report))
    if not report["fits"]:
        print(f"error: {args.stage} does not fit on {args.topology}: largest buffers "
              f"{'; '.join(report['largest_buffers'][:3])}; shrink with: {'; '.join(report['shrink_with'])}",
              file=sys.stderr)
        sys.exit(3)


EXTRA_COMMANDS[("train", "compile")] = (
    "compile a training stage's step ahead of time for a TPU slice (libtpu, no TPU needed): memory per chip "
    "against HBM, FLOPs per step, implied step time; exits 3 when it does not fit",
    _train_compile_arguments,
    _train_compile_command,
)


if __name__ == "__main__":
    main()

"""Print the job spec a stage would be submitted with: `python -m operators.render --backend B --stage S --profile P`.

Pod / JobSet / indexed Job manifest (kubernetes), Dataproc batch, spark-submit line, container config (docker), or
the local command, for review before a deployment. Nothing is submitted; no provider package is needed.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from operators.backends import BACKENDS
from operators.specs import render
from operators.stage_operator import stage_argv
from xgen_core.config import load_config
from xgen_core.errors import XgenError
from xgen_core.stages import get_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operators.render", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", required=True, choices=BACKENDS)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--run-id", default="manual__render")
    parser.add_argument("--json", action="store_true", help="JSON instead of YAML")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    try:
        stage = get_stage(args.stage)
        cfg = load_config(args.profile, args.overrides)
        params = {"profile": args.profile, "overrides": args.overrides}
        spec = render(args.backend, stage, stage_argv(stage.entrypoint_module, params, args.run_id, {}), cfg)
    except (XgenError, ValueError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    if args.backend == "spark-submit" and not args.json:
        print(spec["command_line"])
        return 0
    print(json.dumps(spec, indent=2) if args.json else yaml.safe_dump(spec, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Container entrypoint of the `math_eval` stage."""

from xgen_core.stages import stage_main

if __name__ == "__main__":
    stage_main("math_eval")

"""Container entrypoint of the `grpo` stage."""

from xgen_core.stages import stage_main

if __name__ == "__main__":
    stage_main("grpo")

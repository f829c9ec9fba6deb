"""Container entrypoint of the `dpo` stage."""

from xgen_core.stages import stage_main

if __name__ == "__main__":
    stage_main("dpo")

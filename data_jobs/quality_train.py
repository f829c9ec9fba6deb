"""Container entrypoint of the `quality_train` stage."""

from xgen_core.stages import stage_main

if __name__ == "__main__":
    stage_main("quality_train")

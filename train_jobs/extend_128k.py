"""Container entrypoint of the `extend_128k` stage."""

from xgen_core.stages import stage_main

if __name__ == "__main__":
    stage_main("extend_128k")

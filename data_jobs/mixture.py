"""Container entrypoint of the `mixture` stage."""

from xgen_core.stages import stage_main

if __name__ == "__main__":
    stage_main("mixture")

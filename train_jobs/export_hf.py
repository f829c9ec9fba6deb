"""Container entrypoint of the `export_hf` stage."""

from xgen_core.stages import stage_main

if __name__ == "__main__":
    stage_main("export_hf")

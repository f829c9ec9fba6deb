"""Container entrypoint of the `tokenizer` stage."""

from xgen_core.stages import stage_main

if __name__ == "__main__":
    stage_main("tokenizer")

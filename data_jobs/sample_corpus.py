"""Container entrypoint of the `sample_corpus` stage."""

from xgen_core.stages import stage_main

if __name__ == "__main__":
    stage_main("sample_corpus")

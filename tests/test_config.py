"""Config: base + profile + overrides, and errors that name the key and what is allowed."""

from __future__ import annotations

import pytest

from xgen_core.config import available_profiles, load_config
from xgen_core.errors import ConfigError


def test_profiles_exist_and_resolve():
    assert {"tiny", "xgen-small-4b", "xgen-small-9b"} <= set(available_profiles())
    for profile in available_profiles():
        cfg = load_config(profile)
        assert cfg.profile == profile
    assert load_config("tiny").spark.master == "local[2]"
    assert load_config("xgen-small-4b").root.startswith("gs://")


def test_overrides_parse_yaml_values_and_free_map_keys():
    cfg = load_config("tiny", ["seed=7", "ingest.inputs=[/a, /b]", "spark.conf.spark.executor.memory=4g"])
    assert cfg.seed == 7 and cfg.ingest.inputs == ["/a", "/b"]
    assert cfg.spark.conf["spark.executor.memory"] == "4g"
    assert set(load_config("tiny").spark.conf) < set(cfg.spark.conf)  # merged into the profile's map


@pytest.mark.parametrize(
    "override, message",
    [
        ("ingest.max_bad_fractoin=0.1", "unknown config key 'ingest.max_bad_fractoin'; allowed here: inputs, max_bad_fraction"),
        ("ingest.max_bad_fraction=lots", "config key 'ingest.max_bad_fraction': Input should be a valid number"),
        ("nosuchsection.x=1", "unknown config key 'nosuchsection'"),
        ("orchestration.backend=mars", "config key 'orchestration.backend': Input should be 'local', 'docker', 'kubernetes', 'dataproc' or 'spark-submit'"),
        ("seed", "is not of the form key=value"),
    ],
)
def test_bad_keys_and_values_fail_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config("tiny", [override])
    assert message in str(error.value)


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown profile 'huge'; available: .*tiny"):
        load_config("huge")

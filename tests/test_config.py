"""The run configuration: one object with every default, recorded whole, read back whole, and no silently dropped
option."""

from __future__ import annotations

import pytest

from localjudge.config import DEFAULTS, RunConfig, home


def test_a_configuration_read_back_from_its_json_is_the_same():
    config = DEFAULTS.replace(allow_hosts=("judge.internal",), dicom_window=(40.0, 400.0), vlm="/models/x",
                              shard="1/2", alpha=25.0)
    again = RunConfig.from_json(config.to_json())
    assert again == config and isinstance(again.allow_hosts, tuple) and isinstance(again.dicom_window, tuple)
    assert RunConfig.from_json(DEFAULTS.to_json()) == DEFAULTS


def test_replace_refuses_a_name_that_is_no_field():
    with pytest.raises(TypeError, match="no field alhpa"):
        DEFAULTS.replace(alhpa=25.0)


def test_replace_keeps_the_default_for_an_option_not_given():
    assert DEFAULTS.replace(alpha=None, beta=0.4) == RunConfig(beta=0.4)


def test_home_is_localjudge_home_once_set(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALJUDGE_HOME", str(tmp_path))
    assert home() == tmp_path
    monkeypatch.delenv("LOCALJUDGE_HOME")
    assert home().parts[-2:] == (".cache", "localjudge")

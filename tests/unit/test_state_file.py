"""The controller's state file (ryu_app/state_file.py): round trips, atomic replacement, clear errors."""

import json
import os
import stat

import pytest
import yaml

from mptcp_lb.config import ConfigError
from mptcp_lb.slots import Transition
from ryu_app.state_file import StateFileError, load, restore, save

STATE = {
    "changes": {"web": {"removed": [3], "added": [], "states": {"2": "draining"}}},
    "health": {("web", 1): {"state": "down", "since": 95.0}},
    "transitions": {"web": {7: Transition(previous=2, until=400.0)}},
}


def test_round_trip_moves_times_between_the_clocks(tmp_path):
    path = tmp_path / "state.json"
    save(str(path), STATE, monotonic_now=100.0, wall_now=1_000_000.0)
    doc = json.loads(path.read_text())
    assert doc["transitions"] == {"web": [[7, 2, 1_000_300.0]]}  # wall clock on disk
    # Restarted 20 s later with a monotonic clock that started over.
    back = load(str(path), monotonic_now=5.0, wall_now=1_000_020.0)
    assert back["transitions"] == {"web": {7: Transition(previous=2, until=285.0)}}
    assert back["health"] == {("web", 1): {"state": "down", "since": -20.0}}
    assert back["changes"] == STATE["changes"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_save_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    save(str(path), STATE, 0.0, 0.0)
    save(str(path), {**STATE, "transitions": {}}, 0.0, 0.0)
    assert json.loads(path.read_text())["transitions"] == {}
    assert os.listdir(tmp_path) == ["state.json"]


def test_no_file_is_no_state(tmp_path):
    assert load(str(tmp_path / "absent.json"), 0.0, 0.0) is None


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"version": 9}', "version 9, expected 1"),
    ('{"version": 1, "health": [], "transitions": {}}', "not a state file this controller wrote"),
    ('{"version": 1, "changes": {}, "health": [{"vip": "web", "dip": 1, "state": "meh", "since": 0}], '
     '"transitions": {}}', "health state 'meh'"),
])
def test_a_damaged_file_is_named(tmp_path, text, match):
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(StateFileError, match=match):
        load(str(path), 0.0, 0.0)


def test_restore_applies_the_changes_to_the_yaml_and_refuses_what_no_longer_fits(tmp_path, raw_config):
    state_path = tmp_path / "state.json"
    raw_config.setdefault("controller", {})["state_file"] = str(state_path)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw_config))
    base, config, restored = restore(str(config_path), 0.0, 0.0)
    assert config == base and restored is None
    save(str(state_path), {"changes": {"web": {"removed": [], "added": [], "states": {"2": "draining"}}},
                           "health": {}, "transitions": {}}, 0.0, 0.0)
    base, config, restored = restore(str(config_path), 0.0, 0.0)
    assert config.vip("web").dip(2).state == "draining" and base.vip("web").dip(2).state == "active"
    # Every DIP drained, once the YAML lost DIP 3: the state no longer fits, and says so.
    save(str(state_path), {"changes": {"web": {"removed": [], "added": [], "states": {"1": "draining",
                                                                                      "2": "draining"}}},
                           "health": {}, "transitions": {}}, 0.0, 0.0)
    raw_config["vips"][0]["dips"] = raw_config["vips"][0]["dips"][:2]
    config_path.write_text(yaml.safe_dump(raw_config))
    with pytest.raises(ConfigError, match=f"{state_path}.web.dips: no active DIP would be left"):
        restore(str(config_path), 0.0, 0.0)

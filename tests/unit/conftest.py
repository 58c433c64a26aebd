import copy

import pytest
import yaml

EXAMPLE = "examples/port.yaml"


@pytest.fixture
def raw_config():
    """A fresh, valid config document (the shipped example) to mutate in a test."""
    with open(EXAMPLE) as f:
        return copy.deepcopy(yaml.safe_load(f))

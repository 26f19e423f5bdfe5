"""``serve.run_config`` in a plain script: a config applied through the sync API."""

from __future__ import annotations

import pytest

import trioserve as serve

APPS = "tests.trioserve.config_apps"


@pytest.mark.slow
def test_run_config_applies_a_dict_then_a_smaller_one() -> None:
    """Applications of the config run (with overrides); a second config without one of
    them deletes it; status shows what runs."""
    config = {
        "http_options": {"port": 0},
        "applications": [
            {
                "name": "greet",
                "route_prefix": "/greet",
                "import_path": f"{APPS}:greeter",
                "deployments": [{"name": "Greeter", "user_config": {"greeting": "salut"}}],
            },
            {"name": "double", "route_prefix": "/double", "import_path": f"{APPS}:doubler"},
        ],
    }
    try:
        serve.run_config(config)
        handle = serve.get_app_handle("greet")
        assert handle.remote(None).result(timeout_s=10)["greeting"] == "salut"
        assert set(serve.status().applications) == {"greet", "double"}
        config["applications"] = config["applications"][:1]
        serve.run_config(config)
        assert set(serve.status().applications) == {"greet"}
    finally:
        serve.shutdown()


def test_run_config_bad_config_raises_config_error() -> None:
    """A bad config raises ConfigError naming the field, and starts nothing."""
    with pytest.raises(serve.ConfigError, match=r"applications\[0\]\.import_path"):
        serve.run_config({"applications": [{"name": "x", "import_path": "nocolon"}]})
    assert serve.status().applications == {}

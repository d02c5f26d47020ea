"""`--store`, `--nats-url`, `--replicas` (and BUS_STORE, BUS_NATS_URL, BUS_REPLICAS)."""

from __future__ import annotations

import pytest
from busclient import refused

from busd.server.config import ConfigError, load_config


def test_local_store_is_the_default():
    config = load_config({"--namespaces": "app"}, {})
    assert (config.store, config.replicas) == ("local", 1)


def test_jetstream_flags_and_environment():
    config = load_config({"--namespaces": "app", "--store": "jetstream", "--replicas": "3",
                          "--nats-url": "nats://h1:4222,nats://h2:4222"}, {})
    assert (config.store, config.replicas) == ("jetstream", 3)
    assert config.nats_url == "nats://h1:4222,nats://h2:4222"
    config = load_config({"--namespaces": "app", "--store": "local"},
                         {"BUS_STORE": "JetStream", "BUS_REPLICAS": "5",
                          "BUS_NATS_URL": "nats://h3:4222"})
    assert (config.store, config.replicas, config.nats_url) == ("jetstream", 5, "nats://h3:4222")


@pytest.mark.parametrize("flags, env, reason", [
    ({"--store": "kafka"}, {}, "--store: invalid value 'kafka' (one of local, jetstream)"),
    ({}, {"BUS_STORE": "s3"}, "BUS_STORE: invalid value 's3'"),
    ({"--store": "jetstream", "--replicas": "7"}, {}, "1 to 5 replicas"),
    ({"--replicas": "three"}, {}, "--replicas: invalid literal"),
    ({"--store": "jetstream", "--secret-key": "s"}, {}, "encryption at rest is for --store local"),
])
def test_bad_values_name_the_flag(flags, env, reason):
    with pytest.raises(ConfigError) as error:
        load_config({"--namespaces": "app", **flags}, env)
    assert reason in str(error.value)


def test_jetstream_without_nats_py_says_what_to_install(tmp_path):
    """A Python where `import nats` fails, as where the extra is not installed."""
    hidden = tmp_path / "site"
    (hidden / "nats").mkdir(parents=True)
    (hidden / "nats" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'nats'\", name='nats')\n")
    line = refused("--namespaces", "app", "--store", "jetstream", "--path", str(tmp_path / "d"),
                   "--addr", "127.0.0.1:0", env={"PYTHONPATH": str(hidden)})
    assert "pip install 'busd[jetstream]'" in line

"""Bad configs fail at start with a message naming the key."""
import os

import pytest
from absl import flags
from ml_collections import config_flags

from sleep_jax import tasks
from sleep_jax.train import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = [f"{REPO}/configs/{name}.py:{variant}" for name in ("rule110", "depo", "gsm_infinite")
           for variant in ("tiny", "paper")]


def load(spec):
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=False)
    values(["main", f"--config={spec}"])
    return values.config


def rule110_tiny():
    return load(f"{REPO}/configs/rule110.py:tiny")


@pytest.mark.parametrize("spec", CONFIGS)
def test_every_shipped_config_validates_against_its_task(spec):
    config = load(spec)
    task = tasks.make(config.task)
    assert config_lib.validate(config, task, device_count=8) == (8, 1, 1)
    model = config_lib.model_config(config, task)
    assert model.vocab_size == task.vocab.size
    assert config_lib.sleep_config(config).window == task.layout.window


def test_paper_settings():
    r110, depo, gsm = (load(f"{REPO}/configs/{n}.py:paper") for n in ("rule110", "depo", "gsm_infinite"))
    assert (r110.model.pattern, r110.model.d_model, r110.sleep.window, r110.train.batch_size) == \
        ("AGAG", 256, 24, 512)
    assert (len(depo.model.pattern), depo.model.d_model, depo.sleep.window, depo.train.batch_size) == \
        (10, 512, 75, 128)
    assert (gsm.sleep.window, gsm.train.batch_size) == (2000, 256)
    assert (r110.train.muon_lr, r110.train.adamw_lr) == (2e-3, 5e-5)


def _error(config, device_count=1):
    with pytest.raises(ValueError) as info:
        config_lib.validate(config, tasks.make(config.task), device_count)
    return str(info.value)


def test_unknown_keys_in_blocks_are_named():
    for block in ("model", "sleep", "train", "mesh"):
        config = rule110_tiny()
        config[block]["bogus"] = 1
        assert _error(config).startswith(f"{block}.bogus: unknown key")
    config = rule110_tiny()
    config.optimizer = {}
    assert _error(config).startswith("config.optimizer: unknown key")
    config = rule110_tiny()
    config.task.bogus = 1
    assert _error(config).startswith("task.bogus is not an option of task 'rule110'")


def test_missing_model_key_is_named():
    config = rule110_tiny()
    del config.model["d_model"]
    assert _error(config).startswith("model.d_model: missing key")


def test_window_that_does_not_fit_the_task_layout():
    config = rule110_tiny()
    config.sleep.window = 12
    assert _error(config).startswith("sleep.window=12 does not fit the task layout")


@pytest.mark.parametrize("passes", [0, -1])
def test_passes_below_one(passes):
    config = rule110_tiny()
    config.sleep.passes = passes
    assert _error(config).startswith(f"sleep.passes={passes}")


def test_mesh_that_does_not_divide_the_devices():
    config = rule110_tiny()
    config.mesh.data = 3
    assert "mesh.data=3" in _error(config, device_count=8)


def test_batch_that_does_not_split_over_the_mesh():
    config = rule110_tiny()
    config.train.batch_size = 60
    config.mesh.update(data=8)
    assert _error(config, device_count=8).startswith("train.batch_size=60 must be a multiple")


def test_bad_train_values():
    config = rule110_tiny()
    config.train.steps = 0
    assert _error(config).startswith("train.steps=0")
    config = rule110_tiny()
    config.train.warmup_steps = 10 ** 6
    assert _error(config).startswith("train.warmup_steps=1000000 exceeds train.steps")


def test_blocks_are_the_dataclass_defaults_plus_overrides():
    from sleep_jax.model import ModelConfig
    from sleep_jax.sleep import SleepConfig

    model = config_lib.model_block(d_model=48, chunk_size=16)
    assert (model.vocab_size, model.loop) == (None, None)
    assert ModelConfig(**dict(model.to_dict(), vocab_size=7)) == \
        ModelConfig(vocab_size=7, d_model=48, chunk_size=16)
    sleep = config_lib.sleep_block(window=8, passes=3)
    assert SleepConfig(**sleep.to_dict()) == SleepConfig(window=8, passes=3)
    with pytest.raises(ValueError, match=r"^model\.d_modle: unknown key"):
        config_lib.model_block(d_modle=48)
    with pytest.raises(ValueError, match=r"^sleep\.pases: unknown key"):
        config_lib.sleep_block(window=8, pases=3)

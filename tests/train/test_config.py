"""Bad configs fail at start with one line starting with the key; the run's record
(config.json) decides what a resume may change and how an eval with other settings is named."""
import json
import os

import pytest
from absl import flags
from ml_collections import config_flags

from sleep_jax import flat, tasks
from sleep_jax.parallel.mesh import mesh_shape
from sleep_jax.train import config as config_lib
from sleep_jax.train import record as record_lib
from sleep_jax.train import stages as stages_lib
from sleep_jax.train.errors import ConfigError

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
    stages = config_lib.validate(config, task, device_count=8)
    assert mesh_shape(dict(config.mesh), 8) == (8, 1, 1)
    assert stages[-1].window == task.layout.window and stages[-1].last_step == \
        stages_lib.with_total_steps(config, stages).train.steps
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
    # The paper's budgets: Rule 110 at t = 32 for about 5B tokens; Depo 100k steps, with JetBlocks.
    tokens = {name: c.train.steps * c.train.batch_size * tasks.make(c.task).layout.seq_len
              for name, c in (("rule110", r110), ("depo", depo))}
    assert r110.task.steps == (32,) and 4.9e9 < tokens["rule110"] < 5.1e9
    assert depo.model.pattern == "AJ" * 5 and tokens["depo"] == 4.8e9


def _error(config, device_count=1):
    with pytest.raises(ConfigError) as info:
        config_lib.validate(config, config_lib.make_task(config), device_count)
    message = str(info.value)
    assert "\n" not in message
    return message


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
    assert _error(config).startswith("sleep.window=12: does not fit the task layout")


@pytest.mark.parametrize("passes", [0, -1])
def test_passes_below_one(passes):
    config = rule110_tiny()
    config.sleep.passes = passes
    assert _error(config).startswith("sleep.passes")  # SleepConfig's own rule


def test_mesh_that_does_not_divide_the_devices():
    config = rule110_tiny()
    config.mesh.data = 3
    assert "mesh.data=3" in _error(config, device_count=8)


def test_batch_that_does_not_split_over_the_mesh():
    config = rule110_tiny()
    config.train.batch_size = 60
    config.mesh.update(data=8)
    assert _error(config, device_count=8).startswith("train.batch_size=60: must be a multiple")


def test_batch_must_split_into_micro_batches_over_the_mesh():
    """Each of train.grad_accum_steps micro-batches is split over mesh.data x mesh.fsdp; the eval
    batch is not accumulated and keeps the mesh rule alone."""
    config = rule110_tiny()
    config.train.update(batch_size=48, grad_accum_steps=4, eval_batch_size=8)
    config.mesh.update(data=4, fsdp=2)
    assert _error(config, device_count=8) == (
        "train.batch_size=48: must be a multiple of train.grad_accum_steps x mesh.data x "
        "mesh.fsdp = 4 x 4 x 2 = 32")
    config.train.batch_size = 64
    stages = config_lib.validate(config, config_lib.make_task(config), 8)
    assert stages[-1].steps == config.train.steps
    assert config_lib.train_config(config).grad_accum_steps == 4
    config.train.eval_batch_size = 12
    assert _error(config, device_count=8).startswith(
        "train.eval_batch_size=12: must be a multiple of mesh.data x mesh.fsdp = 8")


@pytest.mark.parametrize("key, value, message", [
    ("steps", 0, "train.steps=0: must be an int >= 1"),
    ("seed", -1, "train.seed=-1: must be an int >= 0"),
    ("keep_checkpoints", 0, "train.keep_checkpoints=0: must be an int >= 1"),
    ("grad_accum_steps", 0, "train.grad_accum_steps=0: must be an int >= 1"),
    ("muon_lr", -0.1, "train.muon_lr=-0.1: must be a learning rate > 0"),
    ("adamw_lr", 0.0, "train.adamw_lr=0.0: must be a learning rate > 0"),
    ("muon_lr", float("nan"), "train.muon_lr=nan: must be a finite number"),
    ("grad_clip", -1.0, "train.grad_clip=-1.0: must be a number >= 0"),
    ("adam_b2", 1.0, "train.adam_b2=1.0: must be a number in [0, 1)"),
    ("schedule", "step", "train.schedule='step': must be one of"),
    ("warmup_steps", 10 ** 6, "train.warmup_steps=1000000: exceeds train.steps=300"),
    ("log_every", True, "train.log_every=True: must be an int >= 0"),
])
def test_bad_train_values(key, value, message):
    config = rule110_tiny()
    config.train[key] = value
    assert _error(config).startswith(message)


def test_model_rules_come_from_the_model_config():
    config = rule110_tiny()
    config.model.attn_kv_heads = 3
    assert _error(config).startswith("model.attn")


def _record(tmp_path, config):
    record_lib.write_run_config(str(tmp_path), config)
    return record_lib.load_run_config(str(tmp_path))


def test_run_record_round_trips_and_a_resume_may_change_only_the_listed_keys(tmp_path):
    config = rule110_tiny()
    stored = _record(tmp_path, config)
    assert record_lib.differences(stored, config) == {}  # tuples come back as tuples
    assert stored.task.steps == (0,)
    resumed = rule110_tiny()
    resumed.train.update(steps=600, log_every=5, eval_every=100, checkpoint_every=50,
                         keep_checkpoints=1)
    record_lib.check_resume(stored, resumed, "run/config.json")
    for key, value in [("sleep.passes", 3), ("model.d_model", 128), ("train.muon_lr", 1e-3),
                       ("task.steps", (1,))]:
        changed = record_lib.with_overrides(config, {key: value})
        with pytest.raises(ConfigError) as info:
            record_lib.check_resume(stored, changed, "run/config.json")
        old = flat.flatten(config)[key]
        assert str(info.value).startswith(f"{key}={value if key != 'task.steps' else [1]!r}: "
                                          f"the run in run was trained with {key}={old!r}")


def test_a_record_written_before_a_key_existed_reads_its_default(tmp_path):
    config = rule110_tiny()
    record_lib.write_run_config(str(tmp_path), config)
    path = tmp_path / record_lib.RUN_CONFIG
    tree = json.loads(path.read_text())
    del tree["init"], tree["stages"], tree["model"]["ut_steps"], tree["sleep"]["truncate_passes"]
    path.write_text(json.dumps(tree))
    stored = record_lib.load_run_config(str(tmp_path))
    assert record_lib.differences(stored, config) == {}
    record_lib.check_resume(stored, config, str(path))


def test_eval_tag_names_the_settings_that_change_the_eval(tmp_path):
    stored = _record(tmp_path, rule110_tiny())
    assert record_lib.eval_tag(stored, stored) is None
    assert record_lib.eval_tag(None, stored) is None
    assert record_lib.eval_tag(stored, record_lib.with_overrides(
        stored, {"sleep.passes": 2, "train.eval_batch_size": 64})) == "sleep.passes=2"
    assert record_lib.eval_tag(stored, record_lib.with_overrides(
        stored, {"task.eval_steps": (1, 2)})) == "task.eval_steps=[1,2]"


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


def test_a_record_from_before_carry_conv_tail_ran_with_the_tail_carried(tmp_path):
    """Runs recorded before `sleep.carry_conv_tail` carried the conv tail across windows: their
    record reads True, so resuming one with the new default is refused, naming the key."""
    config = rule110_tiny()
    record_lib.write_run_config(str(tmp_path), config)
    path = tmp_path / record_lib.RUN_CONFIG
    tree = json.loads(path.read_text())
    del tree["sleep"]["carry_conv_tail"]
    path.write_text(json.dumps(tree))
    stored = record_lib.load_run_config(str(tmp_path))
    assert stored.sleep.carry_conv_tail is True and config.sleep.carry_conv_tail is False
    with pytest.raises(ConfigError, match=r"^sleep\.carry_conv_tail=False: the run .* was trained with "
                                          r"sleep\.carry_conv_tail=True"):
        record_lib.check_resume(stored, config, str(path))
    config.sleep.carry_conv_tail = True
    record_lib.check_resume(stored, config, str(path))

"""The commands' shared entry (sleep_jax.cli) and their early checks: every bad flag, config file
or prompt is one ConfigError line naming it, found while the flags are parsed (or before the
run's model is built), in-process here. The quiet CPU run of a command: tests/test_convert.py."""
import os

import pytest
from absl import flags
from ml_collections import config_flags

from sleep_jax import cli, generate
from sleep_jax.bench import engine as bench_engine
from sleep_jax.bench import memory as bench_memory
from sleep_jax.tasks import default_config, make
from sleep_jax.train.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(define_flags, *argv):
    """Parses ``argv`` with a command's flags defined in fresh FlagValues (``cli.parse_into``)."""
    values = flags.FlagValues()
    define_flags(values)
    cli.parse_into(values, ["command", *argv])
    return values


def _config_flag(values):
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=False,
                                    accept_new_attributes=True)


def test_a_missing_config_file_is_named_with_its_path():
    with pytest.raises(ConfigError, match=r"^--config=configs/nope\.py:tiny: no such config file$"):
        _parse(_config_flag, "--config=configs/nope.py:tiny")
    with pytest.raises(ConfigError, match=r"^--config=configs/nope\.py: no such config file$"):
        _parse(_config_flag, "--config=configs/nope.py", "--config.train.steps=2")  # not config_config


def test_a_config_file_error_is_its_own_last_line():
    with pytest.raises(ConfigError) as error:
        _parse(_config_flag, f"--config={REPO}/configs/rule110.py:nope")
    assert "\n" not in str(error.value) and "Traceback" not in str(error.value)
    assert str(error.value).endswith("configs/rule110.py:nope: unknown variant; one of ('tiny', 'paper')")


@pytest.mark.parametrize("flag, message", [
    ("--eval_examples=-1", r"--eval_examples=-1: -1 is not a non-negative integer"),
    ("--temperature=-1", r"--temperature=-1.0: sampling\.temperature must be >= 0, got -1\.0"),
    ("--temperature=nan", r"--temperature=nan: sampling\.temperature must be >= 0, got nan"),
    ("--top_p=1.5", r"--top_p=1\.5: sampling\.top_p must be in \(0, 1\], got 1\.5"),
    ("--top_k=-2", r"--top_k=-2: sampling\.top_k must be >= 0"),
    ("--passes=0", r"--passes=0: sleep\.passes >= 1 required, got 0"),
])
def test_generate_refuses_bad_flags_while_parsing(flag, message):
    with pytest.raises(ConfigError, match=message):
        _parse(generate.define_flags, "--workdir=run", flag)
    _parse(generate.define_flags, "--workdir=run", "--temperature=0.7", "--top_k=5", "--top_p=0.9")


def test_generate_prompt_errors_name_the_flag_or_file(tmp_path):
    vocab = make(default_config("rule110", "tiny")).vocab
    assert generate.encode_prompt(vocab, "0110|", "--prompt") == vocab.encode("0110|")
    with pytest.raises(ConfigError, match=r"^--prompt: empty prompt"):
        generate.encode_prompt(vocab, "", "--prompt")
    with pytest.raises(ConfigError, match=r"^--prompt: token 'x' is not in the vocabulary"):
        generate.encode_prompt(vocab, "01x0", "--prompt")
    with pytest.raises(ConfigError, match="exactly one of --prompt and --prompt_file"):
        generate.read_prompt(None, None)
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match=f"^--prompt_file={missing}: .*No such file"):
        generate.read_prompt(None, missing)
    (tmp_path / "prompt.txt").write_text("0110|\n")
    assert generate.read_prompt(None, str(tmp_path / "prompt.txt")) == \
        ("0110|", f"--prompt_file={tmp_path / 'prompt.txt'}")


def test_bench_flags_are_checked_while_parsing():
    with pytest.raises(ConfigError, match=r"^flag --passes=\['1', '0'\]: sleep\.passes >= 1 required, got 0$"):
        _parse(bench_engine.define_flags, "--passes=1,0")
    with pytest.raises(ConfigError, match=r"^flag --window=0: sleep\.window >= 1 required"):
        _parse(bench_engine.define_flags, "--window=0")
    _parse(bench_engine.define_flags, "--passes=1,2", "--window=8")
    with pytest.raises(ConfigError, match=r"--config.* must have a value other than None"):
        _parse(bench_memory.define_flags, "--gpus=1")
    with pytest.raises(ConfigError, match=r"^flag --remat=\['bogus'\]: sleep\.remat='bogus' must be one of"):
        _parse(bench_memory.define_flags, "--config=configs/rule110.py:tiny", "--remat=bogus")


def test_quiet_libraries_drop_orbax_info_and_its_harmless_warning_only():
    import logging

    def record(path, level, msg):
        return logging.LogRecord("absl", level, path, 1, msg, ("x",), None)

    keep = cli.QuietLibraries().filter
    assert not keep(record("/site-packages/orbax/checkpoint/a.py", logging.INFO, "Closing %s"))
    assert not keep(record("/site-packages/orbax/checkpoint/_src/metadata/checkpoint.py", logging.WARNING,
                           "Metadata file does not exist: %s"))
    assert keep(record("/site-packages/orbax/checkpoint/a.py", logging.WARNING, "Failed to read %s"))
    assert keep(record("/work/sleep_jax/train/loop.py", logging.INFO, "step %s"))


def test_an_argparse_usage_error_is_one_line(capsys):
    from sleep_jax.train import sweep
    with pytest.raises(SystemExit) as exit_status:
        sweep.main(["--root=r", "--grid=sleep.passes=1"])
    assert exit_status.value.code == 1
    assert capsys.readouterr().err == \
        "python -m sleep_jax.train.sweep: the following arguments are required: --config\n"

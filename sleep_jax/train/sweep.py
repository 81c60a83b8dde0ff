"""Expand a grid of config overrides into ``sleep_jax.main`` commands, one run per grid point.

    python -m sleep_jax.train.sweep --config=configs/rule110.py:tiny --root=runs/r110 \
        --grid='sleep.passes=1,2,3' --grid='task.steps=(0,),(1,),(2,)' [--set train.steps=600]

prints 9 commands (passes x t), each with its own ``--workdir=<root>/<name>``, then one
``python -m sleep_jax.plot`` command per value of the *other* grid keys, with the runs that differ
only in ``sleep.passes`` on one figure, and one with every run (``<root>/all.png``). Pipe the commands to a shell, a job array or ``parallel``.
Values are split on commas outside brackets, so tuples like ``(0,)`` stay whole. Keys joined by
``+`` take the same value together: ``--grid='task.steps+task.eval_steps=(1,),(2,)'`` trains and
evaluates each model at its own t (then one plot shows N = 1, 2, 3 over t).
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
from typing import Sequence

from sleep_jax import cli

PASSES_KEY = "sleep.passes"


def split_values(text: str) -> list[str]:
    """``"1,2"`` -> ``["1", "2"]``; ``"(0,),(1, 2)"`` -> ``["(0,)", "(1, 2)"]``."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        values.append(current.strip())
    if depth != 0 or not values or any(not v for v in values):
        raise ValueError(f"--grid values {text!r}: unbalanced brackets or an empty value")
    return values


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["a.b=1,2", "c.d=x"]`` -> ``{"a.b": ["1", "2"], "c.d": ["x"]}`` (order kept)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        name = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+"
        if not sep or not re.fullmatch(rf"{name}(\+{name})*", key):
            raise ValueError(f"--grid {item!r}: expected 'block.key[+block.key...]=v1,v2,...'")
        if key in grid:
            raise ValueError(f"--grid {key}: given twice")
        grid[key] = split_values(values)
    return grid


def run_name(point: dict[str, str]) -> str:
    """A directory name for a grid point: ``passes=2_steps=1`` (last component of the first key
    of each grid entry, safe characters only)."""
    parts = []
    for key, value in point.items():
        clean = re.sub(r"[^\w.-]+", "-", value).strip("-") or "x"
        parts.append(f"{key.split('+')[0].rsplit('.', 1)[-1]}={clean}")
    return "_".join(parts)


def expand(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, the last key varying fastest."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def check_run(config: str, overrides: Sequence[str]) -> None:
    """Parses ``--config=<config>`` and one run's ``--config.<block>.<key>=<value>`` flags as
    ``sleep_jax.main`` does and checks the keys (``config.check_structure``), so that a bad key
    or value stops the sweep with one line (``ConfigError``) before any command is printed."""
    from absl import flags
    from ml_collections import config_flags

    from sleep_jax.train.config import check_structure

    argv = ["sweep", f"--config={config}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=False,
                                    accept_new_attributes=True, sys_argv=argv)
    cli.parse_into(values, argv)
    check_structure(values.config)


def commands(config: str, root: str, grid: dict[str, list[str]], fixed: Sequence[str] = (),
             python: str = "python") -> list[str]:
    """The train commands, then the plot commands grouping runs that differ only in passes;
    every run's flags checked first (``check_run``)."""
    lines = []
    fixed_flags = []
    for item in fixed:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected 'block.key=value'")
        fixed_flags.append(f"--config.{key.strip()}={value.strip()}")
    points = expand(grid)
    for point in points:
        workdir = os.path.join(root, run_name(point))
        overrides = fixed_flags + [f"--config.{k}={v}" for keys, v in point.items() for k in keys.split("+")]
        check_run(config, overrides)
        args = [python, "-m", "sleep_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]
        lines.append(" ".join(shlex.quote(a) for a in args))
    if PASSES_KEY in grid:
        others = {k: v for k, v in grid.items() if k != PASSES_KEY}
        for rest in expand(others):
            dirs = [os.path.join(root, run_name({k: p if k == PASSES_KEY else rest[k] for k in grid}))
                    for p in grid[PASSES_KEY]]
            out = os.path.join(root, (run_name(rest) or "all") + ".png")
            args = [python, "-m", "sleep_jax.plot", *dirs, f"--out={out}"]
            lines.append(" ".join(shlex.quote(a) for a in args))
        if others:  # every run on one figure: one line per N over all buckets
            dirs = [os.path.join(root, run_name(point)) for point in points]
            args = [python, "-m", "sleep_jax.plot", *dirs, f"--out={os.path.join(root, 'all.png')}"]
            lines.append(" ".join(shlex.quote(a) for a in args))
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.ArgumentParser(prog="python -m sleep_jax.train.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file[:variant]")
    parser.add_argument("--root", required=True, help="parent directory of the run workdirs")
    parser.add_argument("--grid", action="append", default=[], help="block.key=v1,v2,...")
    parser.add_argument("--set", action="append", default=[], dest="fixed",
                        help="block.key=value, the same in every run")
    parser.add_argument("--python", default="python")
    args = parser.parse_args(argv)
    if not args.grid:
        parser.error("give at least one --grid")
    for line in commands(args.config, args.root, parse_grid(args.grid), args.fixed, args.python):
        print(line)


if __name__ == "__main__":
    cli.run_argparse(main)

"""The import graph of the lower layers runs downward only: no loop, no lazy import to break one.

Levels, lowest first: the modules with no project imports (axes, windows, flat, files, numerics),
then parallel (mesh, axis rules), ops (the Pallas kernels read the axis rules under a mesh), layers. A module of one level imports (at module level or inside a function)
only from lower levels or its own package; and importing a level loads nothing above it.
"""
import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "sleep_jax"
LEVELS = {"axes": 0, "windows": 0, "flat": 0, "files": 0, "numerics": 0, "parallel": 1, "ops": 2, "layers": 3}


def top(module: str) -> str:
    """The first name under sleep_jax: "sleep_jax.layers.gdn" -> "layers"."""
    return module.split(".")[1] if module.count(".") else ""


def project_imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every `sleep_jax` import in a file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sleep_jax"):
            modules = [node.module] if node.module != "sleep_jax" else [f"sleep_jax.{a.name}" for a in node.names]
            found += [(node.lineno, m) for m in modules]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("sleep_jax")]
    return found


@pytest.mark.parametrize("level_name", sorted(LEVELS))
def test_lower_levels_import_downward_only(level_name):
    paths = [PACKAGE / f"{level_name}.py"] if (PACKAGE / f"{level_name}.py").exists() else \
        sorted((PACKAGE / level_name).rglob("*.py"))
    assert paths
    for path in paths:
        for line, module in project_imports(path):
            target = top(module)
            assert target == level_name or LEVELS.get(target, 99) < LEVELS[level_name], \
                f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} (level {LEVELS.get(target)}) from " \
                f"level {LEVELS[level_name]}"


# Each level and what importing it must not load (one fresh interpreter per level, run together).
LOADS_NOTHING_ABOVE = {
    "sleep_jax.parallel": ("sleep_jax.layers", "sleep_jax.model", "sleep_jax.ops"),
    "sleep_jax.ops": ("sleep_jax.layers", "sleep_jax.model"),
    "sleep_jax.layers": ("sleep_jax.model", "sleep_jax.sleep", "sleep_jax.train"),
    "sleep_jax.windows": ("sleep_jax.",),
    "sleep_jax.axes": ("sleep_jax.",),
}


def test_importing_a_level_loads_nothing_above_it():
    code = "import sys, {}; print('\\n'.join(sorted(m for m in sys.modules if m.startswith('sleep_jax'))))"
    runs = {module: subprocess.Popen([sys.executable, "-c", code.format(module)], stdout=subprocess.PIPE,
                                     text=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""})
            for module in LOADS_NOTHING_ABOVE}
    for module, run in runs.items():
        loaded = run.communicate()[0].split()
        assert run.returncode == 0 and module in loaded, module
        above = [m for m in loaded if m != module and not m.startswith(module + ".") and m != "sleep_jax"
                 and m.startswith(LOADS_NOTHING_ABOVE[module])]
        assert not above, f"importing {module} loaded {above}"

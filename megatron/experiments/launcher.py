"""The launcher's variables (``ALCF/helpers.sh``'s tables) as seen by a sweep.

Every run of a sweep inherits the launcher's environment variables (``OPT=muon``,
``MICRO_BATCH=8``, ...). A variable that sets a knob the sweep owns (a swept key, or the run's
``--save``/``--load``/``--tensorboard-dir``) would make the launcher refuse every run ("given twice
with different values"), so it is refused up front, naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from megatron.config.fields import ConfigError

HELPERS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "ALCF", "helpers.sh")
EXTRA_VARIABLES = ("MODEL_ARCH", "DTYPE", "NPROC", "NGPU_PER_HOST", "PYTHON_EXEC", "OMP_NUM_THREADS")
"""Launcher variables outside the flag tables that a job array also exports."""
SWEEP_OWNED = ("--save", "--load", "--tensorboard-dir")


def variable_flags(path: str = HELPERS, tables: tuple[str, ...] = ("ENV_VALUE_FLAGS", "ENV_SWITCH_FLAGS")) -> dict[str, str]:
    """``{VARIABLE: --flag}`` of the launcher's value and switch tables."""
    with open(path) as f:
        text = f.read()
    table: dict[str, str] = {}
    for name in tables:
        body = text.split(f"{name}=(", 1)[1].split("\n)", 1)[0]
        for line in body.splitlines():
            entry = line.strip().strip('"')
            if "|" in entry:
                variable, flag = entry.split("|", 1)
                table[variable] = flag
    return table


def launcher_environment(variables: Mapping[str, str]) -> dict[str, str]:
    """The launcher variables set in ``variables`` (what a job array exports to its tasks)."""
    names = set(variable_flags()) | set(EXTRA_VARIABLES)
    return {k: v for k, v in variables.items() if k in names}


def check_conflicts(variables: Mapping[str, str], swept_flags: Iterable[str]) -> None:
    """Refuse launcher variables that set a knob the sweep sets per run.

    Raises:
        ConfigError: Names the variable, its flag and the fix.
    """
    owned = set(swept_flags) | set(SWEEP_OWNED)
    for variable, flag in variable_flags().items():
        if variable in variables and flag in owned:
            why = "each run's own directory" if flag in SWEEP_OWNED else "a swept key"
            raise ConfigError(f"{variable}={variables[variable]}: sets {flag}, which is {why} of the sweep; "
                              f"unset {variable} (or drop it from --grid)")


def env_flags(variables: Mapping[str, str]) -> list[str]:
    """The flags the launcher makes of ``variables`` (as ``env_to_flags`` in helpers.sh), so a
    sweep checks its runs exactly as they will start."""
    flags: list[str] = []
    for variable, flag in variable_flags(tables=("ENV_VALUE_FLAGS",)).items():
        if variables.get(variable):
            flags += [flag, variables[variable]]
    for variable, flag in variable_flags(tables=("ENV_SWITCH_FLAGS",)).items():
        if variable in variables:
            on = variables[variable].lower() in ("1", "true", "yes", "on")
            flags.append(flag if on else "--no-" + flag[2:])
    if variables.get("MODEL_ARCH"):
        flags += ["--config", os.path.join(os.path.dirname(HELPERS), "presets", "arch", variables["MODEL_ARCH"] + ".yaml")]
    return flags

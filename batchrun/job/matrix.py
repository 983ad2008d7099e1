"""The `[matrix]` table of a job file: which keys a sweep varies, and the name of each combination.

```toml
[matrix]
model = ["qwen3-max", "qwen-max"]        # bare `model` means provider.model
params.temperature = [0, 0.7]            # or "params.temperature" = [...]: dotted names, as in --set
```

Keys that can be swept are the ones that shape the request: `provider.model`, `params.<key>`,
`prompt.system` and `prompt.template` (one run has one endpoint and one set of limits). Each swept key gets
an output column `sweep_<last part>` (`sweep_model`, `sweep_temperature`; the whole dotted name with `_` if
two keys end alike), and each combination a readable name such as `model=qwen-max,temperature=0.7`.
This module is pure data; `batchrun.job.sweep` turns the combinations into jobs and requests.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

MAX_VARIANTS = 1000
SWEEPABLE = "model (provider.model), params.<key>, prompt.system, prompt.template"
_SWEEPABLE_KEYS = ("provider.model", "prompt.system", "prompt.template")
_NAME_CHARS = 32  # longer values (a prompt template) are named by their position instead: template=#2


@dataclass(frozen=True, slots=True)
class Axis:
    """One swept key: its values, its output column and the column's type."""

    key: str  # dotted job key, e.g. "params.temperature"
    label: str  # its name in variant names, e.g. "temperature"
    values: tuple[Any, ...]
    dtype: str  # "int", "float", "bool" or "str": one type for the whole column

    @property
    def column(self) -> str:
        """The output column holding this key's value."""
        return "sweep_" + self.label.replace(".", "_")

    def cell(self, value: Any) -> Any:
        """The value as it goes into the output column (dicts and lists as JSON text)."""
        if self.dtype == "float":
            return float(value)
        if self.dtype == "str" and not isinstance(value, str):
            return json.dumps(value, ensure_ascii=False)
        return value

    def text(self, index: int) -> str:
        """The value as it appears in a variant name."""
        value = self.values[index]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(text) > _NAME_CHARS or any(c in text for c in "\n,="):
            return f"#{index + 1}"
        return text


@dataclass(frozen=True, slots=True)
class Combination:
    """One variant of a sweep: its position, name, and the value of each axis."""

    index: int
    name: str
    values: tuple[Any, ...]  # one per axis, as the job takes it


def normalize(table: Any) -> dict[str, list[Any]]:
    """The `[matrix]` table flattened to dotted keys; ValueError says which key is wrong and how."""
    if not isinstance(table, dict):
        raise ValueError("[matrix] must be a table of key = [values]")
    flat: dict[str, list[Any]] = {}
    _flatten(table, "", flat)
    count = 1
    for key, values in flat.items():
        if not values:
            raise ValueError(f"{key}: give at least one value")
        seen = {json.dumps(v, sort_keys=True) for v in values}
        if len(seen) < len(values):
            raise ValueError(f"{key}: a value is listed twice")
        count *= len(values)
    if count > MAX_VARIANTS:
        raise ValueError(f"{count:,} combinations; at most {MAX_VARIANTS:,} variants per run")
    return flat


def _flatten(table: dict[str, Any], prefix: str, out: dict[str, list[Any]]) -> None:
    for name, value in table.items():
        key = prefix + name
        if isinstance(value, dict):
            _flatten(value, key + ".", out)
            continue
        if key == "model":
            key = "provider.model"
        if key in out:
            raise ValueError(f"{key}: swept twice (model and provider.model are the same key)")
        section, _, rest = key.partition(".")
        if key not in _SWEEPABLE_KEYS and not (section == "params" and rest):
            raise ValueError(f"{key} cannot be swept; sweepable keys: {SWEEPABLE}")
        if key in ("params.model", "params.messages", "params.stream"):
            raise ValueError(f"{key} cannot be swept; sweep model or prompt.template instead")
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list of values, e.g. {rest or key} = [0, 0.7]")
        out[key] = value


def axes(matrix: dict[str, list[Any]]) -> list[Axis]:
    """The swept keys, in the order the job file lists them, with their column names and types."""
    short = [key.rpartition(".")[2] for key in matrix]
    result = []
    for (key, values), name in zip(matrix.items(), short, strict=True):
        # Two keys that end alike (params.system, prompt.system) keep their whole names.
        label = key if short.count(name) > 1 else name
        result.append(Axis(key, label, tuple(values), _dtype(values)))
    return result


def combinations(matrix: dict[str, list[Any]]) -> list[Combination]:
    """Every combination, the first key varying slowest (the order of nested loops over the table)."""
    swept = axes(matrix)
    ranges = [range(len(axis.values)) for axis in swept]
    result = []
    for index, picks in enumerate(itertools.product(*ranges)):
        name = ",".join(f"{axis.label}={axis.text(i)}" for axis, i in zip(swept, picks, strict=True))
        values = tuple(axis.values[i] for axis, i in zip(swept, picks, strict=True))
        result.append(Combination(index, name, values))
    return result


def _dtype(values: list[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "float"
    return "str"

"""`${VAR}` in job files: environment variables expanded into string values when the file is loaded.

`${NAME}` is replaced by the variable's value, `${NAME:-default}` by the default when NAME is unset or empty,
and `$${` is a literal `${`. A lone `$` is left alone (prompts talk about prices). A variable that is not
set, with no default, stops the load with an error naming the variable, the file and the key.

API keys do not belong in prompts, paths or params, where they would be sent, written or printed: a job
names its key's variable in `[provider] api_key_env`. `check_no_keys` refuses a key variable (the job's
own, or any preset's) anywhere but `[provider.headers]`, which batchrun sends and never prints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchrun.errors import JobFileError

_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)(\})?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand_env(
    raw: dict[str, Any], path: Path, environ: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """Expand `${VAR}` in every string value of a parsed job file, in place; return (VAR, key) pairs used."""
    env = os.environ if environ is None else environ
    used: list[tuple[str, str]] = []
    _walk(raw, "", path, env, used)
    return used


def check_no_keys(used: list[tuple[str, str]], key_vars: set[str], path: Path) -> None:
    """JobFileError when a variable holding an API key was expanded outside `[provider.headers]`."""
    for name, where in used:
        if name in key_vars and not where.startswith("provider.headers."):
            raise JobFileError(
                path,
                f"${{{name}}} holds an API key, which would be sent or written here: name it in "
                f"[provider] api_key_env instead (only [provider.headers] may use ${{{name}}})",
                key=where,
            )


def _walk(node: Any, where: str, path: Path, env: Mapping[str, str], used: list[tuple[str, str]]) -> Any:
    if isinstance(node, str):
        return expand_text(node, where, path, env, used) if "${" in node else node
    if isinstance(node, dict):
        for key, value in node.items():
            node[key] = _walk(value, f"{where}.{key}" if where else str(key), path, env, used)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            node[i] = _walk(value, f"{where}[{i}]", path, env, used)
    return node


def expand_text(
    text: str, where: str, path: Path, env: Mapping[str, str], used: list[tuple[str, str]] | None = None
) -> str:
    """One string with its `${VAR}`s replaced; JobFileError names the variable, the file and the key."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        inner, closed = match.group(1), match.group(2)
        name, has_default, default = inner.partition(":-")
        if not closed or not _NAME.fullmatch(name):
            raise JobFileError(
                path,
                f"malformed ${{...}} in {text!r}: write ${{NAME}} or ${{NAME:-default}} for an environment "
                "variable, or $${ for a literal ${",
                key=where,
            )
        if used is not None:
            used.append((name, where))
        value = env.get(name)
        if value:
            return value
        if has_default:
            return default
        raise JobFileError(
            path,
            f"the environment variable {name} is not set (or empty): export {name}=..., give a default with "
            f"${{{name}:-default}}, or write $${{{name}}} for a literal ${{{name}}}",
            key=where,
        )

    return _TOKEN.sub(replace, text)

"""`${VAR}` in job files: environment variables expanded into string values when the file is loaded.

`${NAME}` is replaced by the variable's value, `${NAME:-default}` by the default when NAME is unset or empty,
and `$${` is a literal `${`. A lone `$` is left alone (prompts talk about prices). A variable that is not
set, with no default, stops the load with an error naming the variable, the file and the key.

API keys do not belong here: a job names its key's variable in `[provider] api_key_env`, and only there is
the value kept out of everything batchrun prints or writes.
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


def expand_env(raw: dict[str, Any], path: Path, environ: Mapping[str, str] | None = None) -> None:
    """Expand `${VAR}` in every string value of a parsed job file, in place."""
    env = os.environ if environ is None else environ
    _walk(raw, "", path, env)


def _walk(node: Any, where: str, path: Path, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return expand_text(node, where, path, env) if "${" in node else node
    if isinstance(node, dict):
        for key, value in node.items():
            node[key] = _walk(value, f"{where}.{key}" if where else str(key), path, env)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            node[i] = _walk(value, f"{where}[{i}]", path, env)
    return node


def expand_text(text: str, where: str, path: Path, env: Mapping[str, str]) -> str:
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

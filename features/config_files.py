"""Files people write by hand (the contact policy, the experiments, the journeys): read as YAML,
checked against their model, and every problem reported at once, each at its place in the
file's own words: a list entry by its ``name`` where it has one
(``journeys.'cart_recovery'.steps.'push'.message.channel``), else by its position from 1."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_model(path: Path, model: type[M], error: type[Exception], what: str,
               missing: M | None = None) -> M:
    """The file at ``path`` as ``model``; ``missing`` when there is no file (if given), else
    an ``error`` naming ``what`` is missing."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        if missing is not None:
            return missing
        raise error(f"{what} {path} does not exist") from None
    except yaml.YAMLError as problem:
        raise error(f"{path} is not valid YAML: {problem}") from None
    try:
        return model.model_validate(data or {})
    except ValidationError as problems:
        raise error(f"{path} has {problems.error_count()} problem(s):\n"
                    + "\n".join(describe(p, data) for p in problems.errors())) from None


def describe(problem: dict, data: object) -> str:
    """One problem: where, what, and the value found (unless it is a whole section)."""
    message = problem["msg"].removeprefix("Value error, ")
    found = problem.get("input")
    shown = "" if isinstance(found, dict | list) or len(repr(found)) > 120 else f" (got {found!r})"
    return f"  {where(data, problem['loc'])}: {message}{shown}"


def where(data: object, loc: tuple) -> str:
    """A pydantic error location in the file's words."""
    parts: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
            name = node.get("name") if isinstance(node, dict) else None
            if name:
                parts.append(f"'{name}'")
            elif parts:
                parts[-1] += f"[{part + 1}]"
            else:
                parts.append(f"[{part + 1}]")
        else:
            parts.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)


def unique_names(names: list[str], what: str) -> list[str]:
    """``names``, or an error naming the repeated ones (``what``: variant, journey, ...)."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")
    return names


def file_stamp(path: Path) -> tuple[int, int] | None:
    """When and how big the file is (None: no file), to notice a change without reading it."""
    try:
        stat = Path(path).stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def file_in_force(chosen: Path | None, data_dir: Path, name: str, default: Path) -> Path:
    """Which hand-written file applies: the one a setting names, else ``name`` in the data
    directory if it is there, else the built-in ``default``."""
    if chosen is not None:
        return chosen
    local = data_dir / name
    return local if local.exists() else default

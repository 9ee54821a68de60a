"""Where the tool's settings come from: ``[tool.parakeet-coreml]`` of a ``pyproject.toml``.

Only a file the user names (``--config``), or this project's own ``pyproject.toml`` when a
command runs inside the project's checkout, is read: an unrelated project's ``pyproject.toml``
in the current directory is none of the tool's business, even when it is broken.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from infra.errors import UserError

PROJECT_NAME = "parakeet-coreml"


def tool_settings(path: Path | None) -> dict:
    """``[tool.parakeet-coreml]`` of ``path`` (empty for None); unreadable TOML is an error."""
    if path is None:
        return {}
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); expected a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    return table(document, ("tool", PROJECT_NAME), str(path))


def table(settings: dict, keys: tuple[str, ...], where: str) -> dict:
    """``settings[keys[0]][keys[1]]...`` as a table (empty where absent); a key holding anything
    but a table is an error naming the key, what it holds and what is expected."""
    value = settings
    for depth, key in enumerate(keys, 1):
        value = value.get(key, {})
        if not isinstance(value, dict):
            raise UserError(f"{where}: [{'.'.join(keys[:depth])}] is {type(value).__name__} {value!r}; expected a "
                              "table")
    return value


def project_config(start: Path | None = None) -> Path | None:
    """This project's ``pyproject.toml`` when ``start`` (the current directory) lies inside the
    project's checkout, else None."""
    for directory in [(start or Path.cwd()).resolve(), *(start or Path.cwd()).resolve().parents]:
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            try:
                name = tomllib.loads(candidate.read_text()).get("project", {}).get("name")
            except (OSError, tomllib.TOMLDecodeError):
                return None
            return candidate if name == PROJECT_NAME else None
    return None


def config_path(option: Path | None) -> Path | None:
    """The settings file a command reads: ``--config`` when given (it must exist), else
    :func:`project_config`."""
    if option is None:
        return project_config()
    if not Path(option).is_file():
        raise UserError(f"--config {option}: no such file; expected a pyproject.toml-style TOML file")
    return Path(option)

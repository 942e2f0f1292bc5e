"""The one Jinja environment, for every file hpc-bridge renders: the Slurm files (from an
admin's [slurm] template_dir where set), the usage chart and the logrotate snippet. Strict about
undefined names; XML-escaping only for the SVG chart (a Slurm or logrotate file is not markup)."""

from __future__ import annotations

import os
from pathlib import Path

from hpc_bridge.errors import ConfigError


def template_environment(template_dir: str | os.PathLike[str] | None = None):
    """The environment over the shipped templates, or over `template_dir` ([slurm] template_dir)."""
    import jinja2

    if template_dir and not Path(template_dir).is_dir():
        raise ConfigError(f"[slurm] template_dir {template_dir} is not a directory")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir or default_template_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=_is_markup,
    )


def _is_markup(name: str | None) -> bool:
    return bool(name) and name.endswith(".svg.j2")


def default_template_dir() -> Path:
    """The source tree's templates/ next to this package, else templates/ shipped as the package
    hpc_bridge.templates (an editable install may map that name to another checkout)."""
    tree = Path(__file__).resolve().parent.parent / "templates"
    if (tree / "partitions.conf.j2").is_file():
        return tree
    try:
        from importlib.resources import files

        path = Path(str(files("hpc_bridge.templates")))
        if (path / "partitions.conf.j2").is_file():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "templates"

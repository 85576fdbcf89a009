"""Reading the YAML files a user or the package brings (configs, variants, presets, recipes).

One reader, so every such file fails the same way: a missing, malformed or non-mapping file is a
one-line UserError that names the file, never a yaml traceback.
"""

from __future__ import annotations

from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from imgclf.errors import UserError


def read_mapping(path: str | Path | Traversable, what: str = "config file",
                 holds: str = "config keys") -> dict[str, Any]:
    """The mapping in a YAML file (an empty file is {}); `what` names the file, `holds` what it must map."""
    p = Path(path) if isinstance(path, str) else path
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    try:
        values = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{p}: expected a mapping of {holds}")
    return values

"""Build contexts assembled the way `faas-cli build` assembles them.

faas-cli copies `template/<lang>/` into `build/<fn>/`, overlays the handler folder onto
`build/<fn>/function/` (skipping folders named `build` and `template`), then copies every
`configuration.copy` path to `build/<fn>/function/<path>`. Running functions from such a
folder, rather than from the source tree, is what catches a handler that would only work
in the repo (an import from outside its folder, a file the image would not contain).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_SKIP_IN_HANDLER = {"build", "template"}
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache")


def assemble_context(
    template_dir: Path,
    handler_dir: Path,
    copy_paths: Sequence[Path],
    dest: Path,
    *,
    scope: Path | None = None,
) -> Path:
    """Create `dest` afresh as the build context of one function and return it.

    `copy_paths` are relative to `scope` (the folder holding stack.yml), like faas-cli's
    `configuration.copy`, which refuses paths that leave that folder.
    """
    scope = (scope or Path.cwd()).resolve()
    if not (template_dir / "template.yml").exists():
        raise FileNotFoundError(f"no template.yml in template folder {template_dir}")
    if not handler_dir.is_dir():
        raise FileNotFoundError(f"handler folder {handler_dir} does not exist")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(template_dir, dest, ignore=_IGNORE)
    function_dir = dest / "function"
    function_dir.mkdir(exist_ok=True)
    for entry in sorted(handler_dir.iterdir()):
        if entry.name in _SKIP_IN_HANDLER:
            log.info('skipping "%s" folder in %s', entry.name, handler_dir)
            continue
        _copy(entry, function_dir / entry.name)
    for rel in copy_paths:
        src = (scope / rel).resolve()
        if not src.is_relative_to(scope):
            raise ValueError(f"configuration.copy path {rel} is outside {scope}")
        _copy(src, function_dir / Path(rel).relative_to("."))
    return dest


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=_IGNORE)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)

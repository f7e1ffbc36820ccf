"""Optional heavy libraries, imported only where used, each behind a check whose error names the extra to
install: overcomplete (the SAE/transcoder baselines and Table 4's coherence). (cuML, UMAP, vLLM and the CLIP
loaders have their checks beside their code: :mod:`elude.method.clustering`, :mod:`elude.evaluation.judges`,
:mod:`elude.evaluation.labels`.)"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

EXTRA = "baselines"  # pyproject extra that installs overcomplete


class BaselineDependencyError(RuntimeError):
    pass


def overcomplete_sae() -> types.ModuleType:
    """overcomplete's ``sae`` subpackage, with a clear error when the extra is missing."""
    return overcomplete_module("sae")


def overcomplete_module(name: str) -> types.ModuleType:
    """``overcomplete.<name>`` (``sae``, ``metrics``), with a clear error when the extra is missing.

    Imported without running the ``__init__`` of overcomplete and of its ``optimization`` subpackage,
    which load its vision models, plotting and scikit-learn wrappers (timm, torchvision models,
    matplotlib, OpenCV, scikit-learn: 5 s per job, none of it used here): each becomes a bare package,
    and ``optimization`` gets the one function the SAE modules import from it."""
    if f"overcomplete.{name}" in sys.modules:
        return sys.modules[f"overcomplete.{name}"]
    try:
        root = _overcomplete_root()
        for pkg_name, path in (("overcomplete", root), ("overcomplete.optimization", f"{root}/optimization")):
            if pkg_name not in sys.modules:
                pkg = types.ModuleType(pkg_name)
                pkg.__path__ = [path]
                sys.modules[pkg_name] = pkg
        from overcomplete.optimization.utils import batched_matrix_nnls

        sys.modules["overcomplete.optimization"].batched_matrix_nnls = batched_matrix_nnls
        module = importlib.import_module(f"overcomplete.{name}")
    except ImportError as exc:
        for pkg_name in ("overcomplete", "overcomplete.optimization"):
            sys.modules.pop(pkg_name, None)
        raise _missing(str(exc)) from None
    return module


def overcomplete_check() -> None:
    """That overcomplete and its SAE module are installed, without importing them: the workflow's check before
    any job, made in a process that has no other use for torch. (An installed copy that cannot import fails in
    the job, with the same message.)"""
    try:
        root = _overcomplete_root()
    except ImportError as exc:
        raise _missing(str(exc)) from None
    if not (Path(root) / "sae" / "__init__.py").is_file():
        raise _missing(f"{root} has no 'sae' module")


def _overcomplete_root() -> str:
    bare = getattr(sys.modules.get("overcomplete"), "__path__", None)
    if bare and getattr(sys.modules["overcomplete"], "__spec__", None) is None:
        return list(bare)[0]  # the bare package of an earlier call (find_spec refuses a module without a spec)
    spec = importlib.util.find_spec("overcomplete")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("no module named 'overcomplete'")
    return list(spec.submodule_search_locations)[0]


def _missing(reason: str) -> BaselineDependencyError:
    return BaselineDependencyError(
        f"the SAE/transcoder baselines and the dictionary metrics (baselines.families, dictionary) need the "
        f"overcomplete library, which is not "
        f"importable here ({reason}). Install the '{EXTRA}' extra: `.venv/bin/pip install -e '.[{EXTRA}]'` "
        "(scripts/setup.sh does), or set baselines.families: [] to run ELUDe alone.")

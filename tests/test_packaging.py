import subprocess
import sys


def test_stage_packages_import_under_cfx():
    import cfx.generators
    import cfx.prompts
    import cfx.reports

    for module in (cfx.generators, cfx.prompts, cfx.reports):
        assert module.__name__.startswith("cfx.")


def test_no_bare_top_level_names_installed(tmp_path):
    # Run from outside the repository so the source folders are not on sys.path.
    for name in ("generators", "prompts", "reports"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode != 0, f"a bare top-level '{name}' package is importable"
        assert "ModuleNotFoundError" in proc.stderr


def test_cli_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "cfx.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "demo" in proc.stdout and "inspect" in proc.stdout


def test_top_level_exports_are_the_real_objects_with_their_signatures():
    import inspect

    import cfx
    from cfx.jobs import audit, explain, fit
    from cfx.trust.fitted import Fitted

    assert cfx.explain is explain and cfx.audit is audit and cfx.fit is fit and cfx.Fitted is Fitted
    params = inspect.signature(cfx.explain).parameters
    assert list(params)[:4] == ["model", "data", "fitted", "out"] and "flag_percentile" in params
    assert "calibration" in inspect.signature(cfx.fit).parameters
    assert set(cfx.__all__) <= set(dir(cfx))
    for name in cfx.__all__:
        assert getattr(cfx, name) is not None, name


def test_every_installed_package_is_listed_for_setuptools():
    """A sub-package missing from pyproject's package list would be absent from a non-editable install."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"cfx." + ".".join(p.parent.relative_to(root / "cfx").parts) if p.parent != root / "cfx" else "cfx"
             for p in (root / "cfx").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)

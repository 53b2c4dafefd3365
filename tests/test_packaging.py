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

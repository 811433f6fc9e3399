import subprocess
import sys

import zwsi
from zwsi.cli import main


def test_version_flag_prints_package_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"zwsi {zwsi.__version__}"


def test_console_module_help_runs():
    out = subprocess.run([sys.executable, "-m", "zwsi", "--help"], capture_output=True, text=True, check=True)
    assert "usage: zwsi" in out.stdout

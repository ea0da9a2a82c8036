import subprocess
import sys


def test_allscaip_info_reports_working_engines():
    result = subprocess.run([sys.executable, "-m", "allscaip.cli", "info"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "TorchForce evaluates         yes" in result.stdout
    assert "LAMMPS MPI support           True" in result.stdout


def test_allscaip_help_lists_subcommands():
    result = subprocess.run([sys.executable, "-m", "allscaip.cli", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert "info" in result.stdout

"""End-to-end protocol runs with a tiny random-weight smooth model on a few waters:
complete outputs, resume after an interruption, the LAMMPS engine, and input errors."""

import csv
import json
import time

import pytest
import torch

from allscaip.cli import main
from allscaip.config import ModelConfig
from allscaip.io import save_model
from allscaip.model import AllScAIP
from allscaip.protocols import protocol as protocol_module

SHORT = ["--molecule", "water", "-n", "8", "--timestep", "1.0", "--report-interval", "10",
         "--equilibration", "0.05", "--production", "0.15", "--gas-equilibration", "0.05",
         "--gas-production", "0.15"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Random weights, one layer, elements up to Z = 9, continuous node-order feature."""
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=16, num_layers=1, atten_num_heads=2, max_radius=4.0, knn_k=8,
                         freequency_list=[2, 2, 1, 2, 1], edge_distance_expansion_size=64,
                         attn_num_freq=8, smooth_node_order=True, max_num_elements=10)
    return str(save_model(AllScAIP(config).eval(), config, tmp_path_factory.mktemp("model") / "tiny.pt"))


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: a second torch thread only adds contention for these tiny systems."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_liquid_protocol_writes_complete_report(tiny_model, tmp_path, capsys):
    out = tmp_path / "water"
    assert main(["protocol", "liquid", *SHORT, "--model", tiny_model, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| density (g/cm³) |" in printed and "SPC/Fw" in printed and "experiment" in printed
    report = json.loads((out / "report.json").read_text())
    for key in ("density_g_cm3", "hvap_kj_mol"):
        assert set(report[key]) >= {"mean", "stderr"} and report[key]["stderr"] > 0
    assert 0.3 < report["density_g_cm3"]["mean"] < 2.0
    for key in ("n_eff", "t_equil_ps", "statistical_inefficiency", "settings", "versions", "ns_per_day",
                "wall_time_s", "hvap_terms_kj_mol", "experiment", "reference_models"):
        assert key in report, key
    assert len(report["model"]["file_sha256"]) == 64 and report["settings"]["n_molecules"] == 8
    terms = report["hvap_terms_kj_mol"]
    assert report["hvap_kj_mol"]["mean"] == pytest.approx(terms["u_gas"] - terms["u_liq_per_molecule"] + terms["RT"])
    for name in ("timeseries.png", "rdf.png", "replicas.png", "comparison.png", "convergence.png"):
        assert (out / "plots" / name).stat().st_size > 5000
    series = rows(out / "timeseries.csv")
    assert {r["phase"] for r in series} == {"liquid", "gas"} and len(series) == 40
    assert (out / "summary.md").read_text().startswith("| property |")
    assert report["rdf"]["site"] == "O-O" and len(rows(out / "rdf.csv")) > 10
    # 15 samples per phase cannot give 20 effective samples: the verdict says so, with reasons
    assert report["converged"] is False
    assert any("effective samples (need >= 20)" in p for p in report["convergence"]["problems"])
    assert "**NOT CONVERGED**" in printed and "**NOT CONVERGED**" in (out / "summary.md").read_text()


def interrupt_after(monkeypatch, count: int):
    """Make the protocol's progress reporter raise KeyboardInterrupt after ``count`` reports
    (each written after a checkpoint), as if the job were killed there."""
    lines = []
    original = protocol_module.Progress.__call__

    def interrupt(self, line):
        original(self, line)
        if line.startswith("step"):  # a report, not a notice or warning
            lines.append(line)
        if len(lines) == count:
            raise KeyboardInterrupt

    monkeypatch.setattr(protocol_module.Progress, "__call__", interrupt)
    return lambda: monkeypatch.setattr(protocol_module.Progress, "__call__", original)


@pytest.mark.slow  # ~40-50 s; CI runs the slow tests too
def test_interrupted_run_resumes_without_losing_samples(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "water"
    args = ["protocol", "density", *SHORT, "--model", tiny_model, "--out", str(out)]
    restore = interrupt_after(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    restore()
    table = out / "replica-0" / "liquid" / "thermo.csv"
    before = rows(table)
    assert len(before) == 8 and not (out / "report.json").exists()
    assert main(args) == 2  # the folder holds a run: refuse to start over silently
    assert main(args + ["--resume"]) == 0
    after = rows(table)
    assert after[:8] == before
    assert [int(r["step"]) for r in after] == list(range(10, 210, 10))
    report = json.loads((out / "report.json").read_text())
    assert "hvap_kj_mol" not in report and report["density_g_cm3"]["stderr"] > 0
    # resuming a finished run with a longer production extends it
    assert main(args + ["--resume", "--production", "0.25"]) == 0
    assert int(rows(table)[-1]["step"]) == 300
    # an unreachable target uncertainty extends in steps of 25 % of --production (40 steps)
    # up to --max-production: 300 -> 340 -> 380 (420 would exceed 0.05 + 0.35 ps)
    assert main(args + ["--resume", "--density-tolerance", "1e-9", "--max-production", "0.35"]) == 0
    assert int(rows(table)[-1]["step"]) == 380
    target = json.loads((out / "report.json").read_text())["target_uncertainty"]["density_g_cm3"]
    assert target == {"tolerance": 1e-9, "met": False}


def test_worker_processes_run_the_same_replicas(tiny_model, tmp_path, capsys):
    """--workers 2 runs the replicas in two processes at once: the same trajectories as one
    after another (deterministic Reference platform, one thread in both), and the report."""
    def run(name, *extra):
        out = tmp_path / name
        args = ["protocol", "density", *SHORT, "--replicas", "2", "--platform", "Reference",
                "--model", tiny_model, "--out", str(out), *extra]
        assert main(args) == 0
        tables = [rows(out / f"replica-{r}" / "liquid" / "thermo.csv") for r in range(2)]
        for table in tables:
            for row in table:
                del row["ns_per_day"]
        return tables, json.loads((out / "report.json").read_text())

    serial, serial_report = run("serial")
    assert "worker processes" not in capsys.readouterr().out
    parallel, parallel_report = run("parallel", "--workers", "2")
    assert "2 replicas on 2 worker processes, 1 thread(s) each" in capsys.readouterr().out
    assert parallel == serial and serial[0] != serial[1]
    assert parallel_report["density_g_cm3"] == serial_report["density_g_cm3"]
    assert parallel_report["settings"]["workers"] == 2


def test_replica_threads_share_the_cores():
    assert protocol_module.replica_threads(4, 2, 2) == [1, 1, 1, 1]
    assert protocol_module.replica_threads(3, 2, 2) == [1, 1, 2]  # the last one runs alone
    assert protocol_module.replica_threads(5, 2, 8) == [4, 4, 4, 4, 8]
    assert protocol_module.replica_threads(2, 2, 1) == [1, 1]


def test_lammps_engine_end_to_end_with_resume(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "water-lammps"
    args = ["protocol", "liquid", *SHORT, "--engine", "lammps", "--model", tiny_model, "--out", str(out)]
    restore = interrupt_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    restore()
    table = out / "replica-0" / "liquid" / "thermo.csv"
    before = rows(table)
    assert len(before) == 5
    status = out / "replica-0" / "liquid" / "status.json"
    status.write_text(status.read_text().replace('"step": 50', '"step": 40'))  # as if killed before its write
    assert '"step": 40' in status.read_text()
    assert main(args + ["--resume"]) == 0  # read_restart: step, box, velocities, fix npt state
    liquid = rows(table)
    assert liquid[:5] == before and [int(r["step"]) for r in liquid] == list(range(10, 210, 10))
    assert len({r["volume_nm3"] for r in liquid}) > 1  # the box breathes
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["engine"] == "lammps"
    assert 0.3 < report["density_g_cm3"]["mean"] < 2.0 and report["hvap_kj_mol"]["stderr"] > 0
    assert (out / "plots" / "rdf.png").exists()


def test_bad_inputs_give_clear_errors(tiny_model, tmp_path, capsys):
    def error(*extra):
        code = main(["protocol", "liquid", "--model", tiny_model, "--out", str(tmp_path / "x"), *extra])
        message = capsys.readouterr().err
        assert code == 2 and message.startswith("allscaip protocol: error:"), message
        return message

    assert "does not exist" in error("--molecule", str(tmp_path / "missing.sdf"))
    assert "not a built-in molecule" in error("--molecule", "unobtainium")
    assert "charge +1 and multiplicity 1 do not fit water" in error("--molecule", "water", "--charge", "1")
    hcl = tmp_path / "hcl.xyz"
    hcl.write_text("2\n\nH 0 0 0\nCl 1.27 0 0\n")
    assert "does not cover element(s) Cl" in error("--molecule", str(hcl))
    # a trained water model: references fitted for H and O only
    config = ModelConfig(hidden_size=16, num_layers=1, atten_num_heads=2, max_radius=4.0, knn_k=8,
                         freequency_list=[2, 2, 1, 2, 1], max_num_elements=10)
    references = torch.zeros(10, dtype=torch.float64)
    references[[1, 8]] = torch.tensor([-0.17, -0.09], dtype=torch.float64)
    water_model = save_model(AllScAIP(config, element_references=references), config, tmp_path / "w.pt")
    methanol = tmp_path / "methanol.xyz"
    methanol.write_text("6\n\nC 0.000 0.000 0.000\nO 1.410 0.000 0.000\nH -0.360 1.030 0.000\n"
                        "H -0.360 -0.510 0.890\nH -0.360 -0.510 -0.890\nH 1.740 0.900 0.000\n")
    message = error("--molecule", str(methanol), "--model", str(water_model))
    assert "does not cover element(s) C of methanol: it covers H, O" in message
    sdf = tmp_path / "hydroxide.sdf"
    sdf.write_text("hydroxide\n\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\n"
                   "    0.0000    0.0000    0.0000 O   0  0  0  0  0  0  0  0  0  0  0  0\n"
                   "    0.9700    0.0000    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0\n"
                   "  1  2  1  0\nM  CHG  1   1  -1\nM  END\n$$$$\n")
    assert "does not match the formal charges" in error("--molecule", str(sdf))
    assert "model file" in error("--molecule", "water", "--model", str(tmp_path / "none.pt"))
    assert "nothing to resume" in error("--molecule", "water", "--resume")


@pytest.mark.parametrize("forcefield, label", [("spcfw", "SPC/Fw (this run)"),
                                               ("amber14/tip3pfb.xml", "OpenMM ForceField amber14/tip3pfb.xml (this run)")])
def test_classical_forcefield_runs_through_the_same_protocol(tmp_path, capsys, forcefield, label):
    """--forcefield: the protocol's boxes, engine, analysis and report, without a model."""
    out = tmp_path / "classical"
    args = ["protocol", "liquid", "--molecule", "water", "-n", "32", "--forcefield", forcefield,
            "--equilibration", "0.5", "--production", "1.5", "--gas-equilibration", "0.5",
            "--gas-production", "3", "--out", str(out)]
    assert main(args) == 0
    assert label in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["forcefield"] == forcefield and report["settings"]["model"] is None
    assert 0.8 < report["density_g_cm3"]["mean"] < 1.2  # water, whatever the short run's noise
    assert 35 < report["hvap_kj_mol"]["mean"] < 60


def test_forcefield_input_errors(tiny_model, tmp_path, capsys):
    def error(*extra):
        code = main(["protocol", "liquid", "--molecule", "water", "--out", str(tmp_path / "x"), *extra])
        message = capsys.readouterr().err
        assert code == 2 and message.startswith("allscaip protocol: error:"), message
        return message

    assert "either --model or --forcefield" in error("--forcefield", "spcfw", "--model", tiny_model)
    assert "openmm engine only" in error("--forcefield", "spcfw", "--engine", "lammps")
    assert "neither 'spcfw' nor a readable OpenMM ForceField XML" in error(
        "--forcefield", str(tmp_path / "missing.xml"), "-n", "8", "--production", "0.3")
    for wrong in (("--forcefield", "spcfw"), ("--model", tiny_model, "--engine", "lammps")):
        assert "--compile applies to a model on the openmm engine" in error(
            "--compile", *wrong, "--out", str(tmp_path / "compiled"))


def test_compile_runs_the_liquid_and_the_gas_phase_through_the_compiled_pythonforce(tmp_path):
    """``--compile``: both phases on PythonForce + torch.compile (the liquid's box gets the fused
    wide-cell graph when it is wide enough); without it both stay on TorchForce."""
    from allscaip.protocols.settings import ProtocolSettings

    for compile in (False, True):
        settings = ProtocolSettings(command="liquid", molecule="water", model="m.pt", out=str(tmp_path),
                                    compile=compile)
        for kind in ("liquid", "gas"):
            phase = protocol_module.make_phase(settings, kind, tmp_path / "box.pdb", tmp_path, 10, 1)
            assert (phase.backend, phase.compile) == (("python", True) if compile else ("torchforce", False))


def test_wall_time_survives_a_killed_run(tiny_model, tmp_path, monkeypatch):
    """wall_time.json is rewritten while the replicas run, not only after them, so a run killed
    mid-phase (a session's end) keeps its wall time, and the resumed run's report adds to it."""
    out = tmp_path / "water"
    args = ["protocol", "density", *SHORT, "--model", tiny_model, "--out", str(out)]
    monkeypatch.setattr(protocol_module, "WALL_TIME_INTERVAL", 0.05)
    seen = []

    def killed_replica(settings, *_):
        time.sleep(0.5)
        seen.append(json.loads((out / "wall_time.json").read_text())["seconds"])
        raise KeyboardInterrupt  # stands in for the kill: nothing after it runs

    with monkeypatch.context() as patch:
        patch.setattr(protocol_module, "run_replica", killed_replica)
        with pytest.raises(KeyboardInterrupt):
            main(args)
    assert seen and seen[0] >= 0.4
    assert main(args + ["--resume"]) == 0
    assert json.loads((out / "report.json").read_text())["wall_time_s"] > seen[0]


@pytest.mark.slow
def test_killed_process_resumes(tiny_model, tmp_path):
    """SIGKILL a protocol subprocess mid-run; --resume keeps every sample written before it."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "water"
    args = ["protocol", "density", *SHORT, "--model", tiny_model, "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "allscaip.cli", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    table = out / "replica-0" / "liquid" / "thermo.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not table.exists() or len(rows(table)) < 6):
        if process.poll() is not None:
            pytest.fail("the protocol subprocess ended early:\n" + process.stderr.read().decode()[-2000:])
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = rows(table)
    assert 6 <= len(before) < 20
    assert main(args + ["--resume"]) == 0
    after = rows(table)
    assert after[:len(before)] == before and [int(r["step"]) for r in after] == list(range(10, 210, 10))
    assert (out / "report.json").exists()

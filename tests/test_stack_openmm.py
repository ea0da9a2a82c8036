"""The pinned torch / openmm / openmm-torch stack: a TorchScript energy runs as a TorchForce.

A periodic external field E = A * sum_i sum_d cos(2 pi s_id), with s = fractional
coordinates in a triclinic box, has analytic forces; both platforms must reproduce them,
which also proves that OpenMM hands the box vectors to the module.
"""

import numpy as np
import pytest
import torch

from allscaip.plugins.openmm import import_openmmtorch

openmmtorch = import_openmmtorch()
import openmm  # noqa: E402

AMPLITUDE = 3.0  # kJ/mol
BOX_NM = np.array([[2.0, 0.0, 0.0], [0.5, 1.8, 0.0], [-0.4, 0.3, 1.9]])  # reduced triclinic


class PeriodicField(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.amplitude = AMPLITUDE

    def forward(self, positions: torch.Tensor, boxvectors: torch.Tensor) -> torch.Tensor:
        fractional = positions @ torch.linalg.inv(boxvectors)
        return self.amplitude * torch.cos(2 * torch.pi * fractional).sum()


def analytic(positions: np.ndarray, box: np.ndarray) -> tuple[float, np.ndarray]:
    inverse = np.linalg.inv(box)
    fractional = positions @ inverse
    energy = AMPLITUDE * np.cos(2 * np.pi * fractional).sum()
    d_energy_d_fractional = -AMPLITUDE * 2 * np.pi * np.sin(2 * np.pi * fractional)
    forces = -d_energy_d_fractional @ inverse.T
    return energy, forces


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("torchforce") / "field.pt"
    torch.jit.script(PeriodicField()).save(str(path))
    return path


@pytest.mark.parametrize("platform, rtol", [("Reference", 1e-9), ("CPU", 1e-5)])
def test_torchforce_periodic_energy_and_forces_match_analytic(model_path, platform, rtol):
    rng = np.random.default_rng(7)
    positions = rng.uniform(-1.0, 3.0, size=(12, 3))
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in BOX_NM))
    for _ in positions:
        system.addParticle(1.0)
    force = openmmtorch.TorchForce(str(model_path))
    force.setUsesPeriodicBoundaryConditions(True)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName(platform))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(
        openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)

    expected_energy, expected_forces = analytic(positions, BOX_NM)
    assert energy == pytest.approx(expected_energy, rel=rtol, abs=1e-4)
    np.testing.assert_allclose(forces, expected_forces, rtol=rtol, atol=rtol * 40)

"""Model files: fairchem conversion through the restricted unpickler, our own format,
TorchScript export, and clear errors for missing, corrupt or foreign files."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from allscaip.export import load_exported
from allscaip.fairchem import convert_checkpoint
from allscaip.io import ModelFileError, load_model, read_model_file
from conftest import checkpoint_path, golden_outputs, golden_structures, model_inputs


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "allscaip.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "conserving_sm.pt"
    result = run_cli("convert-fairchem", checkpoint_path("conserving_sm"), "-o", path)
    assert result.returncode == 0, result.stderr
    assert "conserving forces" in result.stdout
    return path


def test_converted_file_loads_with_weights_only_and_reproduces_fairchem(model_file):
    payload = torch.load(model_file, weights_only=True)
    assert payload["format"] == "allscaip-model"
    assert payload["metadata"]["source"] == "fairchem MLIPInferenceCheckpoint"
    assert len(payload["weights_sha256"]) == 64
    model = load_model(model_file)
    structure = next(s for s in golden_structures() if s["name"] == "water_box16_pbc")
    energy, forces, _ = model(*model_inputs(structure), True, False)
    reference = golden_outputs("conserving_sm")["water_box16_pbc"]
    assert float(energy) == pytest.approx(reference["energy_fp64_eps32"], abs=2e-5)
    np.testing.assert_allclose(forces.detach().numpy(), reference["forces_fp64_eps32"], atol=2e-5)


def test_float32_network_keeps_float64_element_references(model_file):
    model = load_model(model_file, dtype=torch.float32)
    assert model.element_references.dtype == torch.float64
    assert next(model.parameters()).dtype == torch.float32


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


def test_truncated_model_file_is_a_clear_error(model_file, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(model_file.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not a readable AllScAIP model file"):
        load_model(broken)


def unreadable_files(model_file, folder):
    """Files a user might pass by mistake, each with what the message must say it is."""
    import zipfile

    folder.mkdir(exist_ok=True)
    files = {
        "text": (b"energy forces\n1.0 2.0\n", "it is a text file"),
        "html": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML/XML page"),
        "empty": (b"", "the file is empty"),
        "lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n", "git lfs pull"),
        "truncated": (model_file.read_bytes()[:5000], "truncated or holds no torch data"),
        "binary": (bytes(range(256)) * 4, "damaged or not a torch file"),
    }
    paths = {}
    for name, (content, message) in files.items():
        paths[name] = (folder / f"{name}.pt", message)
        paths[name][0].write_bytes(content)
    with zipfile.ZipFile(folder / "other.zip.pt", "w") as archive:
        archive.writestr("readme.txt", "not torch")
    paths["wrong_zip"] = (folder / "other.zip.pt", "truncated or holds no torch data")
    return paths


def test_every_unreadable_model_file_gets_the_clear_error(model_file, tmp_path):
    from allscaip.export import load_exported

    for name, (path, message) in unreadable_files(model_file, tmp_path / "bad").items():
        with pytest.raises(ModelFileError, match="not a readable AllScAIP model file") as caught:
            load_model(path)
        assert message in str(caught.value), name
        with pytest.raises(ModelFileError, match="not a readable fairchem MLIPInferenceCheckpoint"):
            convert_checkpoint(path)
        with pytest.raises(ModelFileError, match="not a TorchScript archive"):
            load_exported(path)
    with pytest.raises(ModelFileError, match="not a TorchScript archive"):
        load_exported(model_file)


def test_cli_reports_an_unreadable_model_without_a_traceback(model_file, tmp_path):
    text = tmp_path / "model.txt"
    text.write_text("this is not a model\n")
    result = run_cli("export", text, "-o", tmp_path / "out.ts")
    assert result.returncode == 2
    assert "not a readable AllScAIP model file: it is a text file" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_keys_in_a_model_file_config_are_refused(model_file, tmp_path):
    payload = torch.load(model_file, weights_only=True)
    payload["config"]["smoth_node_order"] = True
    edited = tmp_path / "edited.pt"
    torch.save(payload, edited)
    with pytest.raises(ModelFileError, match="did you mean 'smooth_node_order'"):
        load_model(edited)


def test_fairchem_conversion_tolerates_only_fairchem_runtime_keys(monkeypatch):
    from allscaip import fairchem

    fields = fairchem.read_fairchem_checkpoint(checkpoint_path("conserving_sm"))
    assert {"use_compile", "atten_name", "max_atoms"} <= set(fields["model_config"]["backbone"])
    fields["model_config"]["backbone"]["use_quaternions"] = True
    monkeypatch.setattr(fairchem, "read_fairchem_checkpoint", lambda path: fields)
    with pytest.raises(ModelFileError, match="'use_quaternions'.*cannot be converted faithfully"):
        convert_checkpoint(checkpoint_path("conserving_sm"))


def test_tampered_weights_fail_the_checksum(model_file, tmp_path):
    payload = torch.load(model_file, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 1e-3
    tampered = tmp_path / "tampered.pt"
    torch.save(payload, tampered)
    with pytest.raises(ModelFileError, match="corrupt"):
        read_model_file(tampered)


def test_fairchem_checkpoint_given_as_model_file_suggests_conversion():
    with pytest.raises(ModelFileError, match="convert-fairchem"):
        load_model(checkpoint_path("conserving"))


def test_other_torch_file_is_not_an_allscaip_checkpoint(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ModelFileError, match="not a fairchem MLIPInferenceCheckpoint"):
        convert_checkpoint(other)
    with pytest.raises(ModelFileError, match="not an AllScAIP model file"):
        load_model(other)


class Exploit:
    def __reduce__(self):
        return (open, ("/tmp/allscaip_pickle_exploit_ran", "w"))


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    import os

    marker = "/tmp/allscaip_pickle_exploit_ran"
    if os.path.exists(marker):
        os.remove(marker)
    evil = tmp_path / "evil.pt"
    torch.save({"model_config": Exploit()}, evil, pickle_protocol=2)
    result = run_cli("convert-fairchem", evil, "-o", tmp_path / "out.pt")
    assert result.returncode == 2
    assert "cannot be read safely" in result.stderr or "not a fairchem" in result.stderr
    assert not os.path.exists(marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)


def test_export_writes_torchscript_with_metadata(model_file, tmp_path):
    output = tmp_path / "model.ts"
    result = run_cli("export", model_file, "-o", output, "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    module, metadata = load_exported(output)
    assert metadata["dtype"] == "float32"
    assert metadata["cutoff"] == 6.0
    assert metadata["units"] == {"length": "angstrom", "energy": "eV"}
    assert metadata["has_virial"] is True
    assert len(metadata["source_sha256"]) == 64
    structure = next(s for s in golden_structures() if s["name"] == "triclinic_methanol_water")
    energy, forces, virial = module(*model_inputs(structure))
    assert energy.dtype == forces.dtype == virial.dtype == torch.float64
    reference = golden_outputs("conserving_sm")["triclinic_methanol_water"]
    assert float(energy) == pytest.approx(reference["energy"], abs=3e-4)
    np.testing.assert_allclose(forces.numpy(), reference["forces"], atol=2e-4)

"""Trainer: learns, resumes bit for bit, data-parallel run equals one process, fine-tunes."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from allscaip.data import read_frames, split_indices, write_shard
from allscaip.evaluate import frame_errors
from allscaip.io import load_model, read_model_file
from allscaip.reference.datagen import DatagenSettings, Run, sample_run
from allscaip.reference.labels import SpcfwLabeller
from allscaip.train import Trainer, train
from allscaip.train_config import config_from_dict, load_config

TINY_MODEL = {"hidden_size": 16, "num_layers": 1, "atten_num_heads": 2, "max_radius": 4.0, "knn_k": 8,
              "freequency_list": [2, 2, 2, 2], "attn_num_freq": 4, "edge_distance_expansion_size": 16,
              "node_direction_expansion_size": 3, "edge_direction_expansion_size": 3,
              "smooth_node_order": True}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def water_data(tmp_path_factory):
    """12 labelled frames: two 16-water boxes and gas-phase monomers/dimers."""
    settings = DatagenSettings(frames_per_run=3, equilibration_ps=0.05, interval_ps=0.02)
    labeller = SpcfwLabeller()
    runs = [Run(0, "liquid", 16, 300.0, 1.0, 1), Run(1, "liquid", 16, 400.0, 0.9, 2),
            Run(0, "monomer", 1, 300.0, 0.0, 3), Run(1, "dimer", 2, 300.0, 0.0, 4)]
    frames = [frame for run in runs for frame in sample_run(run, settings, labeller)]
    return write_shard(frames, tmp_path_factory.mktemp("data") / "water.npz")


def history(run_folder):
    with open(run_folder / "history.csv") as handle:
        return list(csv.DictReader(handle))


class Interrupted(Exception):
    pass


def run_interrupted_in_epoch(trainer, epoch):
    """``trainer.run()`` stopped as a session would stop, at the start of ``epoch``."""
    original, calls = trainer.train_epoch, []

    def stopping():
        calls.append(1)
        if len(calls) == epoch:
            raise Interrupted
        return original()

    trainer.train_epoch = stopping
    with pytest.raises(Interrupted):
        trainer.run()


def run_interrupted_mid_epoch(trainer, step):
    """``trainer.run()`` stopped inside an epoch, just before optimiser step ``step`` (counted
    from 1), with a checkpoint written after every step."""
    original, calls = trainer.batch_loss, []

    def stopping(*args):
        calls.append(1)
        if len(calls) == step:
            raise Interrupted
        return original(*args)

    trainer.batch_loss, trainer.checkpoint_seconds = stopping, 0.0
    with pytest.raises(Interrupted):
        trainer.run()


def tiny_config(data, **changes):
    values = {"data": {"train": str(data), "validation_fraction": 0.25, "test_fraction": 0.0},
              "model": TINY_MODEL, "optim": {"epochs": 3, "max_atoms_per_batch": 60, "warmup_steps": 2,
                                             "lr": 3e-3},
              "dtype": "float64", "threads": 1}
    values.update(changes)
    return config_from_dict(values)


def test_training_lowers_the_validation_loss_and_writes_results(water_data, tmp_path):
    config = tiny_config(water_data)
    trainer = Trainer(config, tmp_path, progress=False)
    model = trainer.ema_model()
    before = trainer.validation_loss(frame_errors(model, trainer.validation_frames))
    results = trainer.run()
    after = trainer.history[-1]["validation_loss"]
    assert after < 0.7 * before
    assert (tmp_path / "results.md").read_text().startswith("| set |")
    sets = results["sets"]
    for name in ("train (first 200)", "validation", "test"):  # each set whole, then by phase
        phases = [sets[key]["frames"] for key in (f"{name} (periodic)", f"{name} (isolated)") if key in sets]
        assert sum(phases) == sets[name]["frames"] and len(phases) <= 2
    assert len(sets) == 3 + sum(key.endswith(("(periodic)", "(isolated)")) for key in sets)
    assert sets["validation (periodic)"]["frames"] > 0
    assert "validation_periodic_energy_mae_mev_atom" in trainer.history[-1]
    model = load_model(tmp_path / "model.pt")
    metadata = read_model_file(tmp_path / "model.pt")["metadata"]
    assert model.config.smooth_node_order and metadata["source"] == "allscaip train"
    assert metadata["elements"] == [1, 8]  # what the protocols' element check reads
    # shipped files carry no machine's paths: data named by their last component
    assert metadata["training_config"]["data"]["train"] == Path(water_data).name
    assert str(Path(water_data).parent) not in (tmp_path / "results.json").read_text()
    # element references from least squares: O and H carry most of the energy scale
    assert model.element_references[[1, 8]].abs().min() > 0


@pytest.mark.parametrize("change", [{"use_sincx_mask": False}, {"use_node_path": False, "use_freq_mask": False}])
def test_force_training_works_without_attention_biases(water_data, tmp_path, change):
    """Without a bias the CPU picks its flash attention kernel, which has no double backward."""
    config = tiny_config(water_data, model={**TINY_MODEL, **change}, optim={"epochs": 1, "max_atoms_per_batch": 60})
    trainer = Trainer(config, tmp_path, progress=False)
    assert trainer.train_epoch()["forces"] > 0


@pytest.mark.parametrize("where", ["between epochs", "inside an epoch"])
def test_resume_reproduces_an_uninterrupted_run_exactly(water_data, tmp_path, where):
    config = tiny_config(water_data)
    train(config, tmp_path / "straight", progress=False)

    interrupted = Trainer(config, tmp_path / "resumed", progress=False)
    if where == "between epochs":
        run_interrupted_in_epoch(interrupted, 2)
    else:
        assert interrupted.steps_per_epoch >= 3
        run_interrupted_mid_epoch(interrupted, interrupted.steps_per_epoch + 2)
        state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
        assert (state["epoch"], state["position"]["batch"]) == (1, 1)
    with pytest.raises(ValueError, match="--resume"):
        train(config, tmp_path / "resumed", progress=False)
    train(config, tmp_path / "resumed", resume=True, progress=False)
    straight = read_model_file(tmp_path / "straight" / "model.pt")
    resumed = read_model_file(tmp_path / "resumed" / "model.pt")
    assert straight["weights_sha256"] == resumed["weights_sha256"]
    histories = [history(tmp_path / run) for run in ("straight", "resumed")]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in histories[0]] == \
           [{k: v for k, v in row.items() if k != "seconds"} for row in histories[1]]


def test_resume_with_more_epochs_extends_the_schedule_continuously(water_data, tmp_path):
    def config(epochs, max_atoms=60):
        return tiny_config(water_data, optim={"epochs": epochs, "max_atoms_per_batch": max_atoms,
                                              "warmup_steps": 2, "lr": 3e-3})

    planned = Trainer(config(4), tmp_path, progress=False)
    run_interrupted_in_epoch(planned, 3)
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000

    extended = Trainer(config(8), tmp_path, progress=False)
    extended.resume()
    now, floor = extended.step, 3e-3 * extended.config.optim.min_lr_ratio
    assert now == planned.step and extended.total_steps == 2 * planned.total_steps
    assert extended.learning_rate(now) == pytest.approx(planned.learning_rate(now), rel=1e-12)  # continuous
    assert extended.learning_rate(now + 3) > planned.learning_rate(now + 3)  # then a slower decay
    assert extended.learning_rate(extended.total_steps) == pytest.approx(floor, rel=1e-12)
    rates = [extended.learning_rate(step) for step in range(now, extended.total_steps + 1)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    extended.run()
    assert [int(r["epoch"]) for r in history(tmp_path)] == list(range(1, 9))

    again = Trainer(config(8), tmp_path, progress=False)  # the extension itself survives a resume
    again.resume()
    assert again.learning_rate(now + 3) == pytest.approx(extended.learning_rate(now + 3), rel=1e-12)
    with pytest.raises(ValueError, match="only optim.epochs may change"):
        Trainer(config(9, max_atoms=30), tmp_path, progress=False).resume()
    other_threads, threads = config(8), torch.get_num_threads()
    other_threads.threads = 2  # an execution setting: may change
    Trainer(other_threads, tmp_path, progress=False).resume()
    torch.set_num_threads(threads)
    moved = tmp_path / "elsewhere" / water_data.name  # the same frames in another checkout: fine
    moved.parent.mkdir()
    moved.write_bytes(water_data.read_bytes())
    Trainer(tiny_config(moved, optim=config(8).optim.__dict__), tmp_path, progress=False).resume()
    changed = tmp_path / "changed" / water_data.name
    changed.parent.mkdir()
    frames = read_frames(water_data)
    frames[0].energy += 0.1
    write_shard(frames, changed)
    with pytest.raises(ValueError, match="training frames differ"):
        Trainer(tiny_config(changed, optim=config(8).optim.__dict__), tmp_path, progress=False).resume()
    with pytest.raises(ValueError, match="end it in the past"):
        Trainer(config(5), tmp_path, progress=False).resume()


def test_two_process_torchrun_matches_one_process(water_data, tmp_path):
    values = {"data": {"train": str(water_data), "validation_fraction": 0.25, "test_fraction": 0.0},
              "model": TINY_MODEL, "optim": {"epochs": 2, "max_atoms_per_batch": 100, "warmup_steps": 2},
              "dtype": "float64", "threads": 1}
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(values))
    single = train(load_config(config_path), tmp_path / "single", progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "allscaip.cli", "train", str(config_path), "-o", str(tmp_path / "ddp")]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    one, ddp = history(tmp_path / "single"), history(tmp_path / "ddp")
    assert len(one) == len(ddp) == 2
    for a, b in zip(one, ddp):
        for column in ("train_loss", "validation_loss"):
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-9)
    assert single["world_size"] == 1
    assert '"world_size": 2' in (tmp_path / "ddp" / "results.json").read_text()


def test_fine_tuning_starts_from_a_converted_fairchem_checkpoint(water_data, tmp_path):
    from openmm_helpers import smooth_model_file

    start = smooth_model_file(tmp_path / "fairchem.pt")
    config = tiny_config(water_data, model={}, init_from=str(start), optim={"epochs": 1, "max_atoms_per_batch": 60,
                                                                            "warmup_steps": 1, "lr": 1e-3})
    trainer = Trainer(config, tmp_path / "run", progress=False)
    assert trainer.model.config.hidden_size == load_model(start).config.hidden_size
    model = trainer.ema_model()
    before = trainer.validation_loss(frame_errors(model, trainer.validation_frames))
    trainer.run()
    assert trainer.history[-1]["validation_loss"] < before


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown key in the training config's 'optim' section: 'learning_rate'"):
        config_from_dict({"data": {"train": "x"}, "model": TINY_MODEL, "optim": {"learning_rate": 1}})
    with pytest.raises(ValueError, match="'model' section"):
        config_from_dict({"data": {"train": "x"}})
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="device must be cpu or cuda"):
        config_from_dict({"data": {"train": "x"}, "model": TINY_MODEL, "device": "gpu"})


def test_a_typo_in_the_model_section_is_an_error_naming_the_closest_key(tmp_path):
    """`smoth_node_order: true` must not train a non-conserving model with the default False."""
    text = yaml.safe_dump({"data": {"train": "x"}, "model": {**TINY_MODEL, "smoth_node_order": True}})
    (tmp_path / "train.yaml").write_text(text)
    with pytest.raises(ValueError, match="'smoth_node_order' \\(did you mean 'smooth_node_order'\\?\\)"):
        load_config(tmp_path / "train.yaml")
    with pytest.raises(ValueError, match="'epoch' \\(did you mean 'epochs'\\?\\)"):
        config_from_dict({"data": {"train": "x"}, "model": TINY_MODEL, "optim": {"epoch": 3}})
    with pytest.raises(ValueError, match="'sed' \\(did you mean 'seed'\\?\\)"):
        config_from_dict({"data": {"train": "x"}, "model": TINY_MODEL, "sed": 3})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_training_without_a_gpu_says_so():
    from allscaip.train import training_device

    with pytest.raises(RuntimeError, match="no CUDA device"):
        training_device("cuda")


def test_deal_gives_every_frame_to_one_rank_and_balances_atoms():
    from allscaip.train import deal

    sizes = [648, 3, 48, 96, 6, 192, 3, 24]  # one big box and small frames, as in a real batch
    hands = deal(sizes, 2)
    assert sorted(i for hand in hands for i in hand) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in hand) for hand in hands]
    assert loads == [648, 372]  # round-robin would give 705 and 315
    assert deal(sizes, 1) == [list(range(len(sizes)))]
    assert deal([5], 2) == [[0], []]  # a rank may get nothing (it still joins the all-reduce)


def test_resume_may_add_a_repulsive_wall_that_no_frame_reaches(water_data, tmp_path):
    """A wall below the frames' shortest distances leaves the loss unchanged, so a run may
    take it on --resume and the model file carries it; one that reaches a frame is refused."""
    config = tiny_config(water_data, optim={"epochs": 1, "max_atoms_per_batch": 60})
    Trainer(config, tmp_path, progress=False).run()
    far = tiny_config(water_data, model={**TINY_MODEL, "repulsion": [[8, 8, 2.0, 30.0], [1, 8, 0.8, 30.0]]},
                      optim={"epochs": 2, "max_atoms_per_batch": 60})
    Trainer(far, tmp_path, progress=False).resume()
    near = tiny_config(water_data, model={**TINY_MODEL, "repulsion": [[1, 8, 1.2, 30.0]]},  # O-H bonds ~1 A
                       optim={"epochs": 2, "max_atoms_per_batch": 60})
    with pytest.raises(ValueError, match="reaches a pair of a training frame"):
        Trainer(near, tmp_path, progress=False).resume()
    train(far, tmp_path, resume=True, progress=False)
    assert load_model(tmp_path / "model.pt").config.repulsion == [[8, 8, 2.0, 30.0], [1, 8, 0.8, 30.0]]


def test_extra_frames_are_trained_on_repeated_and_leave_validation_and_test_alone(water_data, tmp_path):
    extra = write_shard(read_frames(water_data)[:2], tmp_path / "extra.npz")
    plain = Trainer(tiny_config(water_data), tmp_path / "plain", progress=False)
    config = tiny_config(water_data)
    config.data.extra, config.data.extra_repeat = [str(extra)], 3
    trainer = Trainer(config, tmp_path / "extra", progress=False)
    assert len(trainer.train_frames) == len(plain.train_frames) + 6
    assert len(trainer.validation_frames) == len(plain.validation_frames)
    assert len(trainer.test_frames) == len(plain.test_frames)
    assert trainer.data_fingerprint != plain.data_fingerprint
    with pytest.raises(ValueError, match="extra_repeat must be at least 1"):
        config_from_dict({"data": {"train": "x", "extra": ["y"], "extra_repeat": 0}, "model": TINY_MODEL})
    with pytest.raises(ValueError, match="no frames in data.extra"):
        empty = tmp_path / "empty"
        empty.mkdir()
        Trainer(config_from_dict({"data": {"train": str(water_data), "extra": [str(empty)]}, "model": TINY_MODEL}),
                tmp_path / "bad", progress=False)


def test_fine_tuning_may_widen_the_neighbourhood_and_keeps_the_weights(water_data, tmp_path):
    """init_from with a 'model' section changes settings that keep the weights' shapes (a
    fine-tune with more neighbours per atom); one that changes a shape is refused."""
    Trainer(tiny_config(water_data, optim={"epochs": 1, "max_atoms_per_batch": 60}), tmp_path / "start",
            progress=False).run()
    start = load_model(tmp_path / "start" / "model.pt")
    wider = Trainer(tiny_config(water_data, model={"knn_k": 12}, init_from=str(tmp_path / "start" / "model.pt")),
                    tmp_path / "wider", progress=False)
    assert wider.model.config.knn_k == 12 and wider.model.config.hidden_size == TINY_MODEL["hidden_size"]
    for name, weight in start.state_dict().items():
        assert torch.equal(wider.model.state_dict()[name].cpu(), weight), name
    frame = wider.validation_frames[0]
    inputs = (frame.positions, frame.numbers, frame.cell, frame.pbc, frame.charge, frame.spin)
    narrow_energy = start(*inputs, compute_forces=False)[0]
    wide_energy = wider.model.eval()(*inputs, compute_forces=False)[0]
    assert abs(float(wide_energy - narrow_energy)) > 1e-6  # the graph changed, so the energy did
    with pytest.raises(ValueError, match="change the shapes of the network's weights"):
        Trainer(tiny_config(water_data, model={"edge_distance_expansion_size": 32}, init_from=str(tmp_path / "start" / "model.pt")),
                tmp_path / "bigger", progress=False)


def test_per_phase_energy_normalisation_divides_each_frame_by_its_phase_variance(water_data, tmp_path):
    """energy_per_phase: periodic and isolated frames' energy errors are each divided by the
    variance of their own phase's training energies, in the training and the validation loss."""
    plain = Trainer(tiny_config(water_data), tmp_path / "plain", progress=False)
    config = tiny_config(water_data, loss={"energy": 1.0, "forces": 0.0, "stress": 0.0, "energy_per_phase": True})
    trainer = Trainer(config, tmp_path / "phase", progress=False)
    references = trainer.model.element_references.detach()
    residuals = {True: [], False: []}
    for frame in trainer.train_frames:
        residuals[bool(frame.pbc.any())].append((frame.energy - float(references[frame.numbers].sum())) / frame.n_atoms)
    assert set(trainer.energy_variances) == {True, False}
    for phase, values in residuals.items():
        assert trainer.energy_variances[phase] == pytest.approx(np.var(values), rel=1e-12)
    assert plain.energy_variances[None] == pytest.approx(np.var(residuals[True] + residuals[False]), rel=1e-12)
    assert trainer.energy_variances[True] < plain.energy_variances[None]  # the liquid gets its own scale

    liquid = [f for f in trainer.train_frames if f.pbc.any()]
    batch = liquid[:2] + [f for f in trainer.train_frames if not f.pbc.any()][:2]
    trainer.config.rotation_augmentation = False
    _, terms = trainer.batch_loss(batch, np.random.default_rng(0))
    model = trainer.model
    expected = 0.0
    for frame in batch:
        energy = model(frame.positions, frame.numbers, frame.cell, frame.pbc, frame.charge, frame.spin,
                       compute_forces=False)[0]
        expected += (float(energy.detach()) - frame.energy) ** 2 / frame.n_atoms**2 / trainer.energy_variances[bool(frame.pbc.any())]
    assert terms["energy"] == pytest.approx(expected / len(batch), rel=1e-9)

    validation = trainer.ema_model()
    frames = trainer.validation_frames
    assert {bool(f.pbc.any()) for f in frames} == {True, False}
    errors = [(float(validation(f.positions, f.numbers, f.cell, f.pbc, f.charge, f.spin, compute_forces=False)[0])
               - f.energy) / f.n_atoms for f in frames]
    expected = np.mean([e**2 / trainer.energy_variances[bool(f.pbc.any())] for e, f in zip(errors, frames)])
    assert trainer.validation_loss(frame_errors(validation, frames)) == pytest.approx(expected, rel=1e-9)

    frames = read_frames(water_data)
    one_gas = [f for f in frames if any(f.pbc)] + [f for f in frames if not any(f.pbc)][:1]
    data = write_shard(one_gas, tmp_path / "one_gas.npz")
    seed = next(s for s in range(100) if len(one_gas) - 1 in split_indices(len(one_gas), s, 0.25, 0.0)["validation"])
    config = tiny_config(data, loss={"energy_per_phase": True})
    config.data.split_seed = seed
    with pytest.raises(ValueError, match="no non-periodic frame among the training frames"):
        Trainer(config, tmp_path / "gas_in_validation_only", progress=False)

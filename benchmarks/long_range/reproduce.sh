#!/usr/bin/env bash
# The long-range study from scratch: reference data, both models, long-range sets, liquid
# protocols, report. About 4 h on 2 CPU cores. Every step resumes or is skipped when done, so
# rerunning after an interruption loses nothing.
#
#   bash benchmarks/long_range/reproduce.sh
#   DEFAULT_RUN=models/allscaip-spcfw-water LOCAL_RUN=benchmarks/long_range/local-only \
#       bash benchmarks/long_range/reproduce.sh     # reuse both trained models (what results/ used)
set -euo pipefail
cd "$(dirname "$0")/../.."
make -s .venv/.installed-stamp
BIN=.venv/bin
DEFAULT_RUN=${DEFAULT_RUN:-runs/long-range-default}
LOCAL_RUN=${LOCAL_RUN:-runs/long-range-local}
PROTOCOL="--molecule water -n 64 --hydrogen-mass 4 --timestep 1.5 --equilibration 2 --production 10 --gas-equilibration 2 --gas-production 20 --seed 1"

$BIN/allscaip datagen spcfw --out data/spcfw-train --seed 1 --liquid-runs 30 --gas-runs 30 --equilibration-ps 0.5 --check-lammps 10
$BIN/allscaip datagen spcfw --out data/spcfw-test --seed 2 --liquid-runs 6 --gas-runs 6 --equilibration-ps 0.5

train() {  # config, run folder: skipped when finished, resumed when interrupted
    if [ -f "$2/results.json" ]; then return; fi
    local resume=""
    if [ -f "$2/checkpoint.pt" ]; then resume="--resume"; fi
    $BIN/torchrun --standalone --nproc-per-node 2 -m allscaip.cli train "$1" -o "$2" $resume
}
train models/allscaip-spcfw-water/train.yaml "$DEFAULT_RUN"
train benchmarks/long_range/local.yaml "$LOCAL_RUN"

$BIN/python benchmarks/long_range/sets.py "$DEFAULT_RUN/model.pt" "$LOCAL_RUN/model.pt" \
    --test data/spcfw-test --out runs/long-range-sets

protocol() {  # model run folder, protocol folder
    if [ -f "$2/report.json" ]; then return; fi
    local resume=""
    if [ -d "$2" ]; then resume="--resume"; fi
    $BIN/allscaip protocol liquid --model "$1/model.pt" $PROTOCOL --out "$2" $resume
}
protocol "$DEFAULT_RUN" runs/long-range-protocol-all-to-all
protocol "$LOCAL_RUN" runs/long-range-protocol-local

$BIN/python benchmarks/long_range/report.py \
    --model "all-to-all=$DEFAULT_RUN" --model "local-only=$LOCAL_RUN" \
    --protocol "all-to-all=runs/long-range-protocol-all-to-all" --protocol "local-only=runs/long-range-protocol-local" \
    --sets runs/long-range-sets/long_range.json --out benchmarks/long_range/results

#!/usr/bin/env bash
# Rebuilds the README's figures (docs/figures/*.png) and its example evaluation table from a run directory
# trained with the README's main-job command:
#   cifar-resnet train --preset fast-cpu --data ../shared/data/cifar100-train.npz --val-split 5000 --out runs/demo
# Usage: bash tools/make_figures.sh [RUN_DIR] [DATA]
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/demo}
data=${2:-../shared/data/cifar100-train.npz}
fig=docs/figures
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cifar-resnet plot "$run" --out "$fig"
cifar-resnet evaluate "$run/best.pt" --data "$data" --split val --no-per-class --no-progress | tee "$fig/evaluate.txt"
cifar-resnet interpret "$run/best.pt" --data "$data" --split val --out "$tmp/interpret" --no-progress > "$fig/interpret.txt"
cp "$tmp/interpret/confusion_matrix.png" "$tmp/interpret/top_losses.png" "$fig/"
cifar-resnet predict "$run/best.pt" --data "$data" --split val --index 100 --show "$fig/predict_one.png" --no-progress
cifar-resnet predict "$run/best.pt" --data "$data" --split val --sample 24 --top-k 1 --show "$fig/predict_grid.png" --no-progress > /dev/null
cifar-resnet lr-find --preset fast-cpu --data "$data" --val-split 5000 --device cpu --start-lr 1e-3 --end-lr 100 \
    --steps 100 --out "$fig/lr_find.png" --no-progress
# the web page with a prediction (the browser test, with Debian's chromium; it uses the test suite's model)
CIFAR_RESNET_UPDATE_FIGURES=1 python -m pytest -q tests/test_browser.py -k example_click

#!/usr/bin/env bash
# The whole pipeline on the built-in synthetic dataset, on the CPU, downloading nothing:
# generate -> prepare -> train -> test -> evaluate (without and with re-ranking) -> ranking picture.
# Sets up .venv with the runtime packages first. Each step below is a command you can run alone.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
PY=.venv/bin/python
start=$SECONDS

# 1. A raw dataset in Market-1501 layout (200 synthetic people, 6 cameras), then the ImageFolder tree.
$PY tools/synthetic.py --out data/synthetic --seed 0
$PY prepare.py --data_dir data/synthetic

# 2. Train a small network from scratch at the images' own size (128x64). From scratch it needs a
#    lower learning rate and less dropout than the classic fine-tuning recipe, and cosine decay.
$PY train.py --name quickstart --data_dir data/synthetic/pytorch --train_all --overwrite \
    --backbone resnet18 --no-pretrained --height 128 --width 64 \
    --total_epoch 9 --warm_epoch 1 --cosine --lr 0.02 --droprate 0.2

# 3. Features of the query and gallery images -> pytorch_result.mat
$PY test.py --name quickstart --test_dir data/synthetic/pytorch

# 4. Rank@k and mAP, without and with k-reciprocal re-ranking; one ranking picture.
$PY evaluate.py --json results/quickstart.json
$PY evaluate_rerank.py --json results/quickstart_rerank.json
$PY demo.py --query_index 0 --output results/quickstart_ranking.png

echo "quickstart done in $((SECONDS - start)) s (after the install); model in model/quickstart, results in results/"

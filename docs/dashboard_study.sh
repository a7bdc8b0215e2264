#!/bin/bash
# The mixed study behind docs/figures/dashboard.png (docs/dashboards.md), the same ensembles as the browser
# tests' study (tests/helpers/study.py, less its one stopped fit): 102 runs in seven `ensemble fit` processes
# on scikit-learn's 8x8 digits (nothing to download), width 32, 8 epochs: sin, ReLU and sigmoid x 5 sigma x
# 4 seeds (the sin runs of seed 3 with the KernelMonitor on 64 held-out digits), sin with label noise 0.5
# (20 runs), ReLU at sigma {0.01, 1} x lr {0.01, 0.1} x 5 seeds (20 runs), and a ReLU pair at lr 0.1 and
# 1e30 (the second diverges at its first step; that process exits 3).
#   bash docs/dashboard_study.sh runs/dashboard_study      # from the repository root, in its venv
set -e
R=${1:-runs/dashboard_study}
mkdir -p "$R"
cat > "$R/kernels.yaml" <<'YAML'
trainer:
  callbacks:
    - {class_path: lightning_mem.callbacks.AlignmentMonitor, init_args: {every_n_steps: 4}}
    - class_path: lightning_mem.callbacks.KernelMonitor
      init_args: {probe_size: 64, train_every_n_steps: null}
YAML
C="--config configs/quickstart.yaml --data.dataset digits --model.net.width 32 --trainer.enable_progress_bar false --run.root $R --trainer.max_epochs 8"
S=0.001,0.01,0.1,1,10
fit() { lightning-mem ensemble fit $C "$@"; }
fit --run.name study_sin --model.net.activation sin --ensemble.init_std $S --ensemble.seed 0,1,2
fit --run.name kernel_sin --config "$R/kernels.yaml" --model.net.activation sin --ensemble.init_std $S --ensemble.seed 3
fit --run.name study_relu --model.net.activation relu --ensemble.init_std $S --ensemble.seed 0,1,2,3
fit --run.name study_sigmoid --model.net.activation sigmoid --ensemble.init_std $S --ensemble.seed 0,1,2,3
fit --run.name noisy_sin --model.net.activation sin --data.label_noise 0.5 --ensemble.init_std $S --ensemble.seed 0,1,2,3
fit --run.name lr_relu --model.net.activation relu --ensemble.init_std 0.01,1 --ensemble.lr 0.01,0.1 --ensemble.seed 0,1,2,3,4
fit --run.name diverging_relu --model.net.activation relu --ensemble.init_std 10 --ensemble.lr 0.1,1e30 --ensemble.seed 0 || [ $? = 3 ]

#!/bin/bash
# The mixed study behind docs/figures/dashboard.png (docs/dashboards.md): 100 runs in five `ensemble fit`
# processes on scikit-learn's 8x8 digits (nothing to download): sin, ReLU and sigmoid x 5 sigma x 4 seeds,
# sin with label noise 0.5 (20 runs), ReLU at sigma {0.01, 1} x lr {0.01, 0.1} x 5 seeds (20 runs).
#   bash docs/dashboard_study.sh runs/dashboard_study      # from the repository root, in its venv
set -e
R=${1:-runs/dashboard_study}
C="--config configs/quickstart.yaml --data.dataset digits --model.net.width 64 --trainer.max_epochs 15 --trainer.enable_progress_bar false --run.root $R"
for act in sin relu sigmoid; do
  lightning-mem ensemble fit $C --model.net.activation $act --run.name study_$act --ensemble.init_std 0.001,0.01,0.1,1,10 --ensemble.seed 0,1,2,3
done
lightning-mem ensemble fit $C --model.net.activation sin --data.label_noise 0.5 --run.name noisy_sin --ensemble.init_std 0.001,0.01,0.1,1,10 --ensemble.seed 0,1,2,3
lightning-mem ensemble fit $C --model.net.activation relu --run.name lr_relu --ensemble.init_std 0.01,1 --ensemble.lr 0.01,0.1 --ensemble.seed 0,1,2,3,4

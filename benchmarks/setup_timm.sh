#!/usr/bin/env bash
# The peer for benchmarks/peer_throughput.py: timm on PyTorch, run on the CPU, in its own
# environment (.venv-timm), never a dependency of vistas.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
test -x .venv-timm/bin/python || "$PYTHON" -m venv .venv-timm
# timm imports torchvision; this torch / torchvision pair runs on the CPU (on x86_64 pip
# takes the CUDA build, a large wheel; CUDA is not used)
.venv-timm/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
.venv-timm/bin/pip install --quiet timm==1.0.31
.venv-timm/bin/python -c "import timm, torch; print('timm', timm.__version__, 'torch', torch.__version__)"

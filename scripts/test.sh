#!/usr/bin/env bash
# Install the package with its test extra and the browser, then run the default test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`, `bash scripts/test.sh tests/test_app_api.py`).
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# torch pinned first: an unpinned torch can pull a multi-GB CUDA build; a CPU build already present satisfies the pin.
python -m pip install --quiet --progress-bar off "torch==2.13.0" -e ".[test]"
bash scripts/install_browser.sh

export GRADIO_ANALYTICS_ENABLED=False
python -m pytest --durations=10 "$@"

#!/usr/bin/env bash
# Set up and run the main job: reconstruct the bundled sample with the shipped checkpoint.
# Writes outputs/demo/colorchecker.h5 (31-band cube), _preview.png (its sRGB rendering) and _spectra.png.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
source scripts/setup.sh
uldm reconstruct samples/colorchecker.png -o outputs/demo --preview "$@"

#!/usr/bin/env bash
# Run the whole GPU suite and the GPU benchmarks on a CUDA machine; results land in $OUT (or
# benchmarks/results/) as JSON: gpu-tests-<gpu>.json, fused_vs_eager-<gpu>.json, end_to_end-cuda.json.
# Where onnxruntime-gpu is not installed, install it first (see .gpu-carry/*/install.sh) and put it on
# PYTHONPATH. Usage: bash tools/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
gpu=$(python -c "import cupy; print(cupy.cuda.runtime.getDeviceProperties(0)['name'].decode().replace(' ', '_'))")
python - <<'PY'
import onnxruntime
assert "CUDAExecutionProvider" in onnxruntime.get_available_providers(), onnxruntime.get_available_providers()
PY
python -m pytest -m gpu tests/gpu -q -rs --junitxml="$out/gpu-tests.xml"
status=$?
python - "$out/gpu-tests.xml" "$out/gpu-tests-$gpu.json" <<'PY'
import json, sys, xml.etree.ElementTree as tree
suite = tree.parse(sys.argv[1]).getroot().find("testsuite") or tree.parse(sys.argv[1]).getroot()
cases = [{"test": f"{c.get('classname')}::{c.get('name')}", "seconds": float(c.get("time", 0)),
          "outcome": "failed" if c.find("failure") is not None or c.find("error") is not None
          else "skipped" if c.find("skipped") is not None else "passed"} for c in suite.iter("testcase")]
json.dump({"summary": {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped")},
           "cases": cases}, open(sys.argv[2], "w"), indent=2)
PY
python benchmarks/fused_vs_eager.py --output-dir "$out" || status=1
python benchmarks/end_to_end.py --device cuda --output "$out/end_to_end-cuda.json" || status=1
exit $status

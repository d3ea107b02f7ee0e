#!/usr/bin/env bash
# Installs everything the project needs on a Debian/Ubuntu machine, and only what is missing:
# the OS packages (servers run by the project itself, never the machine's default instances)
# and a virtual environment with the project installed in it. Safe to run any number of times.
set -euo pipefail
export PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PKGS=(ffmpeg redis-server nats-server postgresql python3-venv python3-dev curl gettext-base)
# Chromium is only needed by the browser tests; it is installed when asked for.
if [[ "${VTP_WITH_BROWSER:-0}" == "1" ]]; then PKGS+=(chromium); fi

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${PKGS[@]}"; do have_pkg "$p" || missing+=("$p"); done

if ((${#missing[@]})); then
  echo "setup: installing OS packages: ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # The postgresql package would start the machine's default cluster; we never use it,
  # so ask policy-rc.d (where honoured) not to start services during the install.
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup: creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
# Reinstall only when pyproject.toml changed since the last successful install. uv (from
# PyPI, into the venv) installs in seconds what pip takes half a minute for; pip does it
# where uv cannot (no wheel for the platform, an index only pip is configured for).
stamp="$VENV/.vtp-installed"
install_with_uv() {
  "$VENV/bin/pip" install uv && "$VENV/bin/uv" pip install --python "$VENV/bin/python" -e ".[local,dev]"
}
install_with_pip() {
  "$VENV/bin/pip" install --upgrade pip && "$VENV/bin/pip" install -e ".[local,dev]"
}
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  echo "setup: installing Python packages into $VENV"
  log="$VENV/pip-install.log"
  if ! install_with_uv >"$log" 2>&1; then
    echo "setup: uv could not install them (see $log); trying pip"
    if ! install_with_pip >>"$log" 2>&1; then
      tail -n 40 "$log"; echo "setup: pip install failed (full log: $log)" >&2; exit 1
    fi
  fi
  touch "$stamp"
fi

# The pinned ffmpeg build (docs/ffmpeg.md), from the imageio-ffmpeg wheel, is the `ffmpeg` of
# the venv: make puts .venv/bin first on PATH, so the stack, the tests and the benchmarks all
# run the one build the function images run. ffprobe stays the OS's.
pinned=$("$VENV/bin/python" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')
[[ -x $pinned ]] || chmod +x "$pinned"
ln -sfn "$pinned" "$VENV/bin/ffmpeg"

# The `vtp` client on PATH: a link into /usr/local/bin (root) or ~/.local/bin, unless a `vtp`
# that is not such a link is there already (then .venv/bin/vtp is the way to run it).
link_dir=/usr/local/bin
[[ $(id -u) -eq 0 ]] || link_dir="$HOME/.local/bin"
link="$link_dir/vtp"
if [[ -L $link || ! -e $link ]] && mkdir -p "$link_dir" 2>/dev/null; then
  ln -sfn "$PWD/$VENV/bin/vtp" "$link" 2>/dev/null || true
fi
echo "setup: ok"

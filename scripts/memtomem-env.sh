#!/usr/bin/env bash
# Set up (once, cached) what the real-memtomem tests need:
#   - uv from PyPI, in its own venv (pinned version below);
#   - a uv cache dir, warmed for memtomem 0.6.11 and 0.6.12, so that test
#     installs can run with `uv tool install --offline`;
#   - the Python 3.12 interpreter uv must use (pyenv's; never downloaded).
#   - pytest (pinned below) in the same cache, for tests/pytest_plugin.rs.
#
# Nothing is installed into ~/.local: warming uses throwaway UV_TOOL_DIR /
# UV_TOOL_BIN_DIR dirs and a throwaway HOME, removed afterwards.
#
# Usage:
#   scripts/memtomem-env.sh            # set up if needed; print `export` lines
#   eval "$(scripts/memtomem-env.sh)"  # ... and use them in this shell
#   scripts/memtomem-env.sh --verify   # also prove both versions install --offline
#
# The same `export` lines are written to "$MM_TEST_CACHE/env.sh".
# Progress goes to stderr; stdout carries only the export lines.
#
# Environment:
#   MM_TEST_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/mm-upgrade-test)
#   MM_TEST_PYTHON  Python 3.12 interpreter to use (default: found via pyenv)
#   MM_TEST_MEMTOMEM_VERSIONS  versions to warm (default "0.6.11 0.6.12")
set -euo pipefail

UV_PIN=0.13.9 # the uv release this was built and measured with (PyPI, 2026-11)
VERSIONS=${MM_TEST_MEMTOMEM_VERSIONS:-"0.6.11 0.6.12"}
CACHE=${MM_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mm-upgrade-test}
VERIFY=0
case "${1:-}" in
  --verify) VERIFY=1 ;;
  "") ;;
  -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "memtomem-env: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

log() { printf '[memtomem-env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'memtomem-env: error: %s\n' "$*" >&2; exit 1; }

# ---- Python 3.12 ---------------------------------------------------------
find_python() {
  local c
  if [[ -n "${MM_TEST_PYTHON:-}" ]]; then echo "$MM_TEST_PYTHON"; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    c=$(pyenv prefix 3.12 2>/dev/null | head -n1 || true)
    if [[ -n "$c" && -x "$c/bin/python3.12" ]]; then echo "$c/bin/python3.12"; return; fi
  fi
  local roots=("${PYENV_ROOT:-}" "$HOME/.pyenv" /root/.pyenv)
  local r
  for r in "${roots[@]}"; do
    [[ -n "$r" ]] || continue
    # newest 3.12.x first
    for c in $(ls -d "$r"/versions/3.12*/bin/python3.12 2>/dev/null | sort -rV); do
      [[ -x "$c" ]] && { echo "$c"; return; }
    done
  done
  c=$(command -v python3.12 2>/dev/null || true)
  if [[ -n "$c" && "$c" != */shims/* ]]; then echo "$c"; return; fi
  return 1
}
PY=$(find_python) || die "no Python 3.12 found (looked at MM_TEST_PYTHON, 'pyenv prefix 3.12', \
\${PYENV_ROOT:-~/.pyenv}/versions/3.12*/bin/python3.12, python3.12 on PATH). memtomem needs it; \
install one (e.g. 'pyenv install 3.12') or set MM_TEST_PYTHON."
[[ -x "$PY" ]] || die "Python 3.12 interpreter '$PY' (from MM_TEST_PYTHON) is not an executable"
PY=$(readlink -f "$PY")
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' >/dev/null 2>&1 \
  || die "$PY is not a working Python 3.12"

# ---- cache root + lock (two concurrent setups must not interleave) -------
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd -P)
exec 9>"$CACHE/.setup.lock"
if ! flock -w 900 9; then die "timed out waiting for $CACHE/.setup.lock (another setup running?)"; fi

VENV=$CACHE/uv-venv
UV=$VENV/bin/uv
export UV_CACHE_DIR=$CACHE/uv-cache
export UV_PYTHON=$PY
export UV_PYTHON_DOWNLOADS=never
export UV_NO_PROGRESS=1
# Don't let a user/system uv.toml change what the tests see.
export UV_NO_CONFIG=1
mkdir -p "$UV_CACHE_DIR"
# uv verifies TLS against its own bundled roots unless SSL_CERT_FILE names a
# bundle; this machine reaches PyPI through a proxy whose CA is only in the
# system bundle. Use the system bundle when the caller didn't pick one.
if [[ -z "${SSL_CERT_FILE:-}" && -r /etc/ssl/certs/ca-certificates.crt ]]; then
  export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi

# ---- uv -----------------------------------------------------------------
have_uv=$("$UV" --version 2>/dev/null | awk '{print $2}' || true)
if [[ "$have_uv" != "$UV_PIN" ]]; then
  log "creating uv $UV_PIN venv in $VENV (had: ${have_uv:-none})"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" || die "python -m venv failed ($PY)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_PIN" \
    || die "pip install uv==$UV_PIN failed (is PyPI reachable?)"
  have_uv=$("$UV" --version 2>/dev/null | awk '{print $2}' || true)
  [[ "$have_uv" == "$UV_PIN" ]] || die "installed uv reports '$have_uv', expected $UV_PIN"
fi

# ---- warm the uv cache ----------------------------------------------------
# One throwaway install per version (online, --refresh on first warm), then a
# stamp. With --verify, prove an --offline install works from the cache.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/mm-env-warm.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
install_into() { # dir version [extra uv flags...]
  local d=$1 v=$2; shift 2
  env HOME="$d/home" UV_TOOL_DIR="$d/tools" UV_TOOL_BIN_DIR="$d/bin" \
    "$UV" tool install "$@" "memtomem==$v"
}
for v in $VERSIONS; do
  stamp=$CACHE/warm-memtomem-$v.uv-$UV_PIN.ok
  if [[ ! -f "$stamp" ]]; then
    log "warming uv cache for memtomem==$v"
    d=$scratch/$v; mkdir -p "$d/home"
    t0=$(date +%s%N)
    out=$(install_into "$d" "$v" 2>&1) || { printf '%s\n' "$out" >&2; die "uv tool install memtomem==$v failed (see above)"; }
    # the same again offline, so a broken cache is caught now, not in a test
    rm -rf "$d"; mkdir -p "$d/home"
    out=$(install_into "$d" "$v" --offline 2>&1) || { printf '%s\n' "$out" >&2; die "offline install of memtomem==$v from $UV_CACHE_DIR failed right after warming"; }
    log "memtomem==$v cached in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    rm -rf "$d"
    touch "$stamp"
  elif [[ $VERIFY == 1 ]]; then
    d=$scratch/$v; mkdir -p "$d/home"
    out=$(install_into "$d" "$v" --offline 2>&1) || { printf '%s\n' "$out" >&2; rm -f "$stamp"; die "cache for memtomem==$v is not warm any more (stamp removed; rerun)"; }
    log "verified: memtomem==$v installs --offline"
    rm -rf "$d"
  fi
done

# pytest, for the fake-server pytest plugin's test (tests/pytest_plugin.rs),
# which installs it --offline beside memtomem in a scratch venv.
PYTEST_PIN=9.2.0
stamp=$CACHE/warm-pytest-$PYTEST_PIN.uv-$UV_PIN.ok
if [[ ! -f "$stamp" ]]; then
  log "warming uv cache for pytest==$PYTEST_PIN"
  "$UV" venv -q "$scratch/pytest" >&2 \
    && "$UV" pip install -q --python "$scratch/pytest/bin/python" "pytest==$PYTEST_PIN" >&2 \
    || die "uv pip install pytest==$PYTEST_PIN failed (is PyPI reachable?)"
  touch "$stamp"
fi

# ---- the environment a test needs ---------------------------------------
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
envfile=$CACHE/env.sh
{
  printf '# generated by %s; source it\n' "$HERE/memtomem-env.sh"
  printf 'export MM_TEST_CACHE=%q\n' "$CACHE"
  printf 'export MM_TEST_UV=%q\n' "$UV"
  printf 'export MM_TEST_UV_VERSION=%q\n' "$UV_PIN"
  printf 'export MM_TEST_INSTALL_MEMTOMEM=%q\n' "$HERE/install-memtomem.sh"
  printf 'export MM_TEST_MEMTOMEM_VERSIONS=%q\n' "$VERSIONS"
  printf 'export MM_TEST_PYTEST_VERSION=%q\n' "$PYTEST_PIN"
  printf 'export UV_CACHE_DIR=%q\n' "$UV_CACHE_DIR"
  printf 'export UV_PYTHON=%q\n' "$UV_PYTHON"
  printf 'export UV_PYTHON_DOWNLOADS=never\n'
  printf 'export UV_NO_PROGRESS=1\n'
  printf 'export UV_NO_CONFIG=1\n'
  if [[ -n "${SSL_CERT_FILE:-}" ]]; then printf 'export SSL_CERT_FILE=%q\n' "$SSL_CERT_FILE"; fi
} >"$envfile.tmp"
mv "$envfile.tmp" "$envfile"
grep '^export' "$envfile"

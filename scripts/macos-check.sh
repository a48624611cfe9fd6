#!/usr/bin/env bash
# Compile-check mm-upgrade (library and binaries) and fake-server's binaries
# (the test doubles: fake-server, fake-uv, fake-host) for macOS, and every
# test target of the workspace (all features) for MM_MACOS_TEST_TARGET
# (default aarch64-apple-darwin, what macos-latest runs; "" skips them; the
# tests have no architecture-dependent code), on Linux:
# Debian's rustc-web, cargo-web and rust-web-src (Rust 1.85, the project's
# rust-version; bookworm-security) build std for the Apple targets with
# -Zbuild-std. Nothing here runs macOS code: this proves src/sys/macos.rs and
# everything it links compile (and its kinfo_proc layout asserts hold), and
# that what is Linux-only in the tests is gated, with warnings as errors.
#
# It works on a copy of the checkout (the lockfile is re-resolved there for
# Rust 1.85, never in the checkout) with a target dir of its own:
# target/macos-check/ (MM_MACOS_CHECK_DIR). Targets: MM_MACOS_TARGETS
# (default: x86_64-apple-darwin aarch64-apple-darwin). The Debian packages
# are installed when missing, which needs root and apt.
#
# MM_MACOS_CHECK_TOOLCHAIN=rustup (GitHub's Ubuntu runners, which have no
# rustc-web): the current toolchain with rustup's std for the Apple targets
# (`rustup target add ...` first), on the checkout itself, same flags.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT=${MM_MACOS_CHECK_DIR:-$ROOT/target/macos-check}
TARGETS=${MM_MACOS_TARGETS:-x86_64-apple-darwin aarch64-apple-darwin}
TEST_TARGET=${MM_MACOS_TEST_TARGET-aarch64-apple-darwin}
PKGS=(rustc-web cargo-web rust-web-src)
die() { echo "macos-check: $*" >&2; exit 1; }

if [[ ${MM_MACOS_CHECK_TOOLCHAIN:-debian} == rustup ]]; then
  for t in $TARGETS; do
    CARGO_TARGET_DIR="$OUT/target-rustup" RUSTFLAGS="-D warnings" \
      cargo check --locked --quiet --target "$t" -p mm-upgrade --lib --bins \
      || die "mm-upgrade does not compile for $t (see above; is the target added with rustup?)"
    CARGO_TARGET_DIR="$OUT/target-rustup" RUSTFLAGS="-D warnings" \
      cargo check --locked --quiet --target "$t" -p fake-server --bins \
      || die "fake-server does not compile for $t (see above)"
    if [[ $t == "$TEST_TARGET" ]]; then
      CARGO_TARGET_DIR="$OUT/target-rustup" RUSTFLAGS="-D warnings" \
        cargo check --locked --quiet --target "$t" --workspace --all-targets --all-features \
        || die "the tests do not compile for $t (see above; gate what is Linux-only)"
    fi
    echo "macos-check: $t compiles (rustup std)"
  done
  exit 0
fi

installed() {
  local n
  n=$(dpkg-query -W -f='${Status}\n' "${PKGS[@]}" 2>/dev/null | grep -c 'install ok installed' || true)
  [[ "$n" -eq ${#PKGS[@]} ]]
}
if ! installed; then
  command -v apt-get >/dev/null 2>&1 \
    || die "the Debian packages ${PKGS[*]} are needed, and there is no apt-get here"
  [[ $(id -u) -eq 0 ]] \
    || die "the Debian packages ${PKGS[*]} are missing; as root: apt-get install -y ${PKGS[*]}"
  echo "macos-check: installing ${PKGS[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${PKGS[@]}" \
    || { apt-get update -q && apt-get install -y -q "${PKGS[@]}"; } \
    || die "apt-get could not install ${PKGS[*]} (they come from bookworm-security; is it in the apt sources?)"
fi
[[ -x /usr/bin/rustc && -x /usr/bin/cargo && -d /usr/lib/rustlib/src/rust/library ]] \
  || die "/usr/bin/rustc, /usr/bin/cargo or the std sources (/usr/lib/rustlib/src) are missing after the install"
/usr/bin/rustc --version

SRC=$OUT/src
rm -rf "$SRC"
mkdir -p "$SRC"
tar -C "$ROOT" --exclude=./target --exclude=./.git -cf - . | tar -C "$SRC" -xf -
cd "$SRC"
# The checkout's lockfile may name releases newer than Rust 1.85 supports.
CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback /usr/bin/cargo update --quiet \
  || die "cargo could not resolve the dependencies for Rust 1.85"
# ignore (assert_fs -> globwalk, tests only): 0.4.30 declares no
# rust-version but needs let chains (Rust 1.88), which the fallback cannot see.
if [[ -n $TEST_TARGET ]]; then
  /usr/bin/cargo update --quiet -p ignore --precise 0.4.23 \
    || die "cargo could not pin ignore 0.4.23 for Rust 1.85"
fi
for t in $TARGETS; do
  t0=$(date +%s)
  RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
    CARGO_TARGET_DIR="$OUT/target" RUSTFLAGS="-D warnings" \
    /usr/bin/cargo check --locked --quiet -Zbuild-std=std,panic_abort \
    --target "$t" -p mm-upgrade --lib --bins \
    || die "mm-upgrade does not compile for $t (see above)"
  # fake-server's SQLite is the system one on macOS (fake-server/Cargo.toml):
  # no Apple C compiler is needed.
  RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
    CARGO_TARGET_DIR="$OUT/target" RUSTFLAGS="-D warnings" \
    /usr/bin/cargo check --locked --quiet -Zbuild-std=std,panic_abort \
    --target "$t" -p fake-server --bins \
    || die "fake-server does not compile for $t (see above)"
  what="mm-upgrade and fake-server compile"
  if [[ $t == "$TEST_TARGET" ]]; then
    RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
      CARGO_TARGET_DIR="$OUT/target" RUSTFLAGS="-D warnings" \
      /usr/bin/cargo check --locked --quiet -Zbuild-std=std,panic_abort \
      --target "$t" --workspace --all-targets --all-features \
      || die "the tests do not compile for $t (see above; gate what is Linux-only)"
    what="$what, tests included"
  fi
  echo "macos-check: $t: $what ($(($(date +%s) - t0))s)"
done

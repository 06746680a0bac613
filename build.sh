#!/usr/bin/env bash
# ping-web: the one entry point.
#
#   ./build.sh            install what is missing, build everything, run the demo
#   ./build.sh test       build if needed, then run every test (CPython; Pyodide in Node and
#                         headless Chromium; the browser demo; the JupyterLite notebook)
#   ./build.sh build      install what is missing and build, nothing else
#   ./build.sh demo       run the demo (builds first if needed)
#   ./build.sh serve      build if needed, then start the relay, serving the browser demo too,
#                         on http://localhost:8000/web/ (README.md: two machines)
#   ./build.sh lite       build the JupyterLite site in dist/lite/
#   ./build.sh bench      benchmarks against native OpenMLS, core-crypto and ts-mls (bench/RESULTS.md)
#   ./build.sh clean      remove build outputs (keeps downloaded caches)
#
# Every step is incremental: inputs are fingerprinted and a step is skipped when its
# fingerprint has not changed. Outputs, fixed so other tools can rely on them:
#   dist/ping_web-<version>-py3-none-any.whl   the package, wasm inside
#   dist/pyodide/                              Pyodide 314 + wheels + pyodide-lock.json
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

CACHE="$ROOT/.cache"
STAMPS="$CACHE/stamps"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
TOOLS="$CACHE/tools"
WASM_TARGET_DIR="$ROOT/wasm/target"
WASM_RAW="$WASM_TARGET_DIR/wasm32-unknown-unknown/release/ping_web_mls.wasm"
WASM_OUT="$ROOT/ping_web/mls/_wasm"
DIST="$ROOT/dist"
DEBIAN_RUSTC=/usr/bin/rustc
DEBIAN_CARGO=/usr/bin/cargo
WASM_LD=/usr/lib/llvm-19/bin/wasm-ld
DEBIAN_PACKAGES=(rustc-web cargo-web rust-web-src lld-19 chromium chromium-driver)

mkdir -p "$STAMPS" "$TOOLS"

step() { printf '\n\033[1m==> %s\033[0m  (+%ss)\n' "$*" "$SECONDS"; }
note() { printf '    %s\n' "$*"; }
die() { printf '\nbuild.sh: %s\n' "$*" >&2; exit 1; }

# fingerprint FILE...: one hash over the contents of the given files/directories.
fingerprint() {
  { find "$@" -type f -not -path '*/target/*' -not -path '*/__pycache__/*' -print0 2>/dev/null || true; } \
    | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}
# fresh NAME HASH: true if step NAME last ran with HASH.
fresh() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp() { echo "$2" >"$STAMPS/$1"; }

ensure_debian_packages() {
  local missing=()
  [[ -x "$DEBIAN_RUSTC" ]] && "$DEBIAN_RUSTC" --version 2>/dev/null | grep '^rustc 1\.9[6-9]' >/dev/null || missing+=(rustc-web cargo-web)
  compgen -G "/usr/src/rustc-*/library/std" >/dev/null || missing+=(rust-web-src)
  [[ -x "$WASM_LD" ]] || missing+=(lld-19)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  if ((${#missing[@]} == 0)); then
    note "Debian packages present: ${DEBIAN_PACKAGES[*]}"
    return
  fi
  step "Installing Debian packages: ${missing[*]}"
  [[ $(id -u) == 0 ]] || die "need root to install Debian packages: apt-get install -y ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_node_packages() {
  local fp
  fp=$(fingerprint package.json package-lock.json)
  if fresh npm "$fp" && [[ -d node_modules/pyodide ]]; then
    note "npm packages up to date"
    return
  fi
  step "Installing npm packages (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
  stamp npm "$fp"
}

ensure_venv() {
  local fp
  fp=$(fingerprint requirements-dev.txt)
  if fresh venv "$fp" && [[ -x "$PY" ]]; then
    note "Python venv up to date (.venv)"
    return
  fi
  step "Creating .venv and installing requirements-dev.txt"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -r requirements-dev.txt
  stamp venv "$fp"
}

wasm_bindgen_version() {
  awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' wasm/Cargo.lock
}

ensure_wasm_bindgen() {
  local want have=""
  want=$(wasm_bindgen_version)
  [[ -x "$TOOLS/bin/wasm-bindgen" ]] && have=$("$TOOLS/bin/wasm-bindgen" --version | awk '{print $2}')
  if [[ "$have" == "$want" ]]; then
    note "wasm-bindgen CLI $want present"
    return
  fi
  step "Installing wasm-bindgen-cli $want (matches Cargo.lock; native build, a few minutes)"
  # Not --locked: the registry mirror can lag behind the CLI's own lock file.
  cargo install wasm-bindgen-cli --version "=$want" --root "$TOOLS" --quiet
}

build_wasm() {
  local fp
  fp=$(fingerprint wasm/src wasm/Cargo.toml wasm/Cargo.lock wasm/.cargo build.sh)
  if fresh wasm "$fp" && [[ -f "$WASM_OUT/ping_web_mls_bg.wasm" ]]; then
    note "wasm module up to date ($(stat -c %s "$WASM_OUT/ping_web_mls_bg.wasm") bytes)"
    return
  fi
  step "Building the OpenMLS wasm module (release; first build takes a few minutes)"
  local start=$SECONDS
  (cd wasm && RUSTC="$DEBIAN_RUSTC" RUSTC_BOOTSTRAP=1 "$DEBIAN_CARGO" build --release \
    --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort)
  note "cargo build: $((SECONDS - start)) s"
  step "Generating JS bindings (wasm-bindgen --target no-modules) and optimising (wasm-opt -Oz)"
  local gen="$CACHE/wasm-bindgen"
  rm -rf "$gen" && mkdir -p "$gen"
  "$TOOLS/bin/wasm-bindgen" --target no-modules --no-typescript --out-dir "$gen" "$WASM_RAW"
  node_modules/.bin/wasm-opt -Oz --strip-debug --strip-producers --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    "$gen/ping_web_mls_bg.wasm" -o "$gen/ping_web_mls_bg.opt.wasm"
  mkdir -p "$WASM_OUT"
  cp "$gen/ping_web_mls.js" "$WASM_OUT/ping_web_mls.js"
  cp "$gen/ping_web_mls_bg.opt.wasm" "$WASM_OUT/ping_web_mls_bg.wasm"
  local raw gz
  raw=$(stat -c %s "$WASM_OUT/ping_web_mls_bg.wasm")
  gz=$(gzip -9 -c "$WASM_OUT/ping_web_mls_bg.wasm" | wc -c)
  printf 'wasm_raw_bytes=%s\nwasm_gzip_bytes=%s\nwasm_bindgen=%s\n' "$raw" "$gz" "$(wasm_bindgen_version)" \
    >"$WASM_OUT/BUILD_INFO"
  note "ping_web_mls_bg.wasm: $raw bytes raw, $gz bytes gzip -9"
  stamp wasm "$fp"
}

build_wheel() {
  local fp
  fp=$(fingerprint ping_web pyproject.toml README.md tools/wheel_bytecode.mjs)
  if fresh wheel "$fp" && compgen -G "$DIST/ping_web-*-py3-none-any.whl" >/dev/null; then
    note "wheel up to date"
    return
  fi
  step "Building the ping_web wheel"
  mkdir -p "$DIST"
  rm -f "$DIST"/ping_web-*.whl
  rm -rf build ping_web.egg-info
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIST" .
  rm -rf build ping_web.egg-info
  # Bytecode for Pyodide's Python beside the sources: Pyodide compiles whatever it imports
  # at every start, and ping_web's modules took ~150 ms of opening a client.
  node tools/wheel_bytecode.mjs "$DIST"/ping_web-*.whl >/dev/null
  # (grep without -q: an early exit would SIGPIPE unzip and fail the pipeline under pipefail)
  unzip -l "$DIST"/ping_web-*.whl | grep ping_web_mls_bg.wasm >/dev/null || die "wheel lacks the wasm module"
  note "$(basename "$DIST"/ping_web-*.whl)"
  stamp wheel "$fp"
}

build_pyodide_dist() {
  local fp
  fp=$(fingerprint requirements-pyodide.txt tools/pyodide_dist.py tools/stdlib_bytecode.mjs node_modules/pyodide/package.json \
    "$DIST"/ping_web-*.whl)
  if fresh pyodide "$fp" && [[ -f "$DIST/pyodide/pyodide-lock.json" ]]; then
    note "dist/pyodide up to date"
    return
  fi
  step "Assembling dist/pyodide (Pyodide runtime, wheels, lock file)"
  local wheels="$CACHE/wheels"
  mkdir -p "$wheels"
  local pure
  pure=$(grep -vE '^(#|$)' requirements-pyodide.txt)  # all pure-Python wheels
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.14 -d "$wheels" $pure
  local selected=()
  while read -r req; do
    local name=${req%%==*} version=${req##*==}
    local pattern
    pattern="$(echo "$name" | tr '-' '_')-$version-*.whl"
    selected+=("$(ls "$wheels"/$pattern | sed -n 1p)")
  done < <(grep -vE '^(#|$)' requirements-pyodide.txt)
  "$PY" tools/pyodide_dist.py --pyodide node_modules/pyodide --out "$DIST/pyodide" \
    "${selected[@]}" "$DIST"/ping_web-*.whl
  # Bytecode for the standard modules a client imports (sources only in the npm package):
  # Pyodide compiles every module it imports at every start.
  node tools/stdlib_bytecode.mjs "$DIST/pyodide" >/dev/null
  stamp pyodide "$fp"
}

build_all() {
  # One build at a time in this checkout (two would race on build/ and dist/).
  exec 9>"$CACHE/build.lock"
  flock 9
  step "Checking the toolchain"
  ensure_debian_packages
  ensure_node_packages
  ensure_venv
  ensure_wasm_bindgen
  build_wasm
  build_wheel
  build_pyodide_dist
}

run_demo() {
  step "Demo: two users, one conversation, in Node under Pyodide"
  node demo/run.mjs
}

# Static checks and unit tests of the Rust crate, built for the host with rustup's toolchain
# (its clippy and rustfmt) in wasm/target/host, so host and wasm32 builds never invalidate
# each other. Incremental: cargo rebuilds only what changed (first run about a minute).
HOST_TARGET_DIR="$ROOT/wasm/target/host"

rust_checks() {
  local cargo
  cargo=$(command -v cargo) || die "no cargo on PATH: the Rust checks need rustup's toolchain"
  "$cargo" clippy --version >/dev/null 2>&1 || die "$cargo has no clippy: rustup component add clippy"
  "$cargo" fmt --version >/dev/null 2>&1 || die "$cargo has no rustfmt: rustup component add rustfmt"
  step "Rust: cargo fmt --check (wasm/)"
  (cd wasm && "$cargo" fmt --check)
  step "Rust: cargo clippy --all-targets -- -D warnings (wasm/, host)"
  (cd wasm && CARGO_TARGET_DIR="$HOST_TARGET_DIR" "$cargo" clippy --all-targets -- -D warnings)
  step "Rust: cargo test (wasm/, host)"
  (cd wasm && CARGO_TARGET_DIR="$HOST_TARGET_DIR" "$cargo" test)
}

# Static checks of the Python (config in pyproject.toml and relay/pyproject.toml): lint and
# format, mypy --strict, and the import contracts between the tiers (docs/design.md).
python_checks() {
  step "ruff check and ruff format --check"
  "$PY" -m ruff check .
  "$PY" -m ruff format --check .
  step "mypy --strict (ping_web, and the relay)"
  "$PY" -m mypy
  (cd relay && "$PY" -m mypy ping_relay)
  step "import-linter: the tiers import only downwards; only _ffi imports js/pyodide"
  "$VENV/bin/lint-imports" --no-cache
}

run_tests() {
  mkdir -p test-output
  ensure_relay  # tests/unit reads the relay's wire helpers; mypy and the relay tests need it too
  rust_checks
  python_checks
  step "CPython tests (the pure core and its property tests)"
  "$PY" -m pytest tests/unit -q
  run_relay_tests
  step "Pyodide tests (Node runtime, real OpenMLS wasm from dist/)"
  "$PY" -m pytest tests/pyodide -q --runtime node --dist-dir "$DIST/pyodide" \
    -p no:cacheprovider -W ignore::DeprecationWarning
  step "Pyodide tests (headless Chromium: real IndexedDB, Web Locks, WebCrypto)"
  export SE_CHROMEDRIVER="${SE_CHROMEDRIVER:-$(command -v chromedriver)}"  # Selenium: no driver download
  "$PY" -m pytest tests/pyodide -q --runtime chrome --dist-dir "$DIST/pyodide" \
    -p no:cacheprovider -W ignore::DeprecationWarning
  step "Browser tests (headless Chromium via Playwright: the web/ demo and its worker protocol)"
  "$PY" -m pytest tests/browser -q -p no:cacheprovider -W ignore::DeprecationWarning
  build_lite  # incremental: skipped when dist/lite is up to date
  step "JupyterLite and guide tests (headless Chromium: docs/notebook.ipynb on dist/lite, docs/guide.md pages)"
  "$PY" -m pytest tests/lite -q -p no:cacheprovider -W ignore::DeprecationWarning
}

# The relay (relay/, docs/relay.md). ping_relay goes into .venv as an editable install
# without dependencies (they are pinned in requirements-dev.txt; ping_web, which it also
# lists, is the repository itself, on pytest's pythonpath).
ensure_relay() {
  local fp
  fp=$(fingerprint relay/pyproject.toml requirements-dev.txt)
  if fresh relay "$fp" && "$PY" -c "import ping_relay" 2>/dev/null; then
    note "ping_relay installed in .venv (editable)"
    return
  fi
  step "Installing the relay into .venv (pip install -e relay, no dependencies)"
  "$PY" -m pip install -q --no-deps --no-build-isolation -e relay
  stamp relay "$fp"
}

# A throwaway PostgreSQL cluster for the relay tests: Debian's postgresql (installed if
# initdb is missing), initdb in a temp folder, a free port on 127.0.0.1, stopped and
# removed on exit. Exports PING_RELAY_TEST_POSTGRES (left alone if already set). initdb
# refuses root, so as root the cluster runs as the postgres user.
PG_BIN=/usr/lib/postgresql/15/bin
PG_TEST_DIR=""
PG_RUN=()

start_test_postgres() {
  if [[ -n "${PING_RELAY_TEST_POSTGRES:-}" ]]; then
    note "PostgreSQL for the relay tests: PING_RELAY_TEST_POSTGRES from the environment"
    return
  fi
  if [[ ! -x "$PG_BIN/initdb" ]]; then
    step "Installing Debian's postgresql (relay tests)"
    [[ $(id -u) == 0 ]] || die "need root to install PostgreSQL: apt-get install -y postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  PG_TEST_DIR=$(mktemp -d /tmp/ping-relay-pg.XXXXXX)
  PG_RUN=()
  if [[ $(id -u) == 0 ]]; then
    chown postgres:postgres "$PG_TEST_DIR"
    PG_RUN=(runuser -u postgres --)
  fi
  local port
  port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  trap stop_test_postgres EXIT
  "${PG_RUN[@]}" "$PG_BIN/initdb" -D "$PG_TEST_DIR/data" -U relay --auth=trust -E UTF8 --no-instructions \
    >"$PG_TEST_DIR/initdb.log" 2>&1 || die "initdb failed: $(cat "$PG_TEST_DIR/initdb.log")"
  "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w -t 60 \
    -o "-p $port -k $PG_TEST_DIR -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null \
    || die "PostgreSQL did not start: $(cat "$PG_TEST_DIR/server.log")"
  export PING_RELAY_TEST_POSTGRES="postgresql://relay@127.0.0.1:$port/postgres"
  # what the relay's fault test needs to restart this cluster (pg_ctl restart)
  export PING_RELAY_TEST_PGDATA="$PG_TEST_DIR/data" PING_RELAY_TEST_PGBIN="$PG_BIN"
  export PING_RELAY_TEST_PGUSER="${PG_RUN[2]:-}"
  note "PostgreSQL 15 on 127.0.0.1:$port (cluster in $PG_TEST_DIR, removed on exit)"
}

stop_test_postgres() {
  [[ -n "$PG_TEST_DIR" ]] || return 0
  "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_TEST_DIR"
  PG_TEST_DIR=""
  unset PING_RELAY_TEST_POSTGRES PING_RELAY_TEST_PGDATA PING_RELAY_TEST_PGBIN PING_RELAY_TEST_PGUSER
}

run_relay_tests() {
  step "Relay: ruff, mypy --strict, and its tests on SQLite and PostgreSQL (real uvicorn processes)"
  "$PY" -m ruff check relay tests/relay
  "$PY" -m ruff format --check relay tests/relay
  (cd relay && "$PY" -m mypy --strict ping_relay)
  start_test_postgres
  "$PY" -m pytest tests/relay -q -p no:cacheprovider
  stop_test_postgres
}

# ./build.sh bench relay: bench/relay/run.py drives simulated devices against the relay
# (SQLite, PostgreSQL with one and two processes) and the same payloads through Redis
# Streams and NATS JetStream (Debian's redis-server and nats-server, installed if
# missing), on a throwaway PostgreSQL. PING_RELAY_BENCH_QUICK=1 for a smoke run.
ensure_bench_servers() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v nats-server >/dev/null || missing+=(nats-server)
  ((${#missing[@]} == 0)) && return
  step "Installing Debian packages for the relay benchmark: ${missing[*]}"
  [[ $(id -u) == 0 ]] || die "need root to install: apt-get install -y ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

run_bench_relay() {
  ensure_venv
  ensure_relay
  ensure_bench_servers
  local saved="${PING_RELAY_TEST_POSTGRES:-}"
  unset PING_RELAY_TEST_POSTGRES  # a throwaway cluster of its own
  start_test_postgres
  step "Relay benchmark: SQLite, PostgreSQL x1 and x2, Redis Streams, NATS JetStream (load $(cut -d' ' -f1-3 /proc/loadavg))"
  PYTHONPATH="$ROOT" "$PY" bench/relay/run.py
  stop_test_postgres
  [[ -n "$saved" ]] && export PING_RELAY_TEST_POSTGRES="$saved"
  return 0
}

# The demo on one port: the relay (relay/, SQLite in dist/demo-relay.db unless
# PING_WEB_RELAY_DB names another file) also serves web/ and dist/pyodide/, so the page,
# its worker and the relay share one origin. PING_WEB_HOST=0.0.0.0 listens on every
# interface; PING_WEB_ORIGIN is the URL browsers open (bound into the devices' signatures).
# Retention (docs/relay.md section 7.7): log entries every member has read are pruned after
# PING_WEB_RETENTION seconds (7 days), every entry after PING_WEB_MAX_RETENTION (30 days).
SERVE_PORT="${PING_WEB_PORT:-8000}"
SERVE_HOST="${PING_WEB_HOST:-127.0.0.1}"
SERVE_RETENTION="${PING_WEB_RETENTION:-604800}"
SERVE_MAX_RETENTION="${PING_WEB_MAX_RETENTION:-2592000}"

run_serve() {
  ensure_relay
  exec 9>&- # let other builds in this checkout run while we serve
  local origin="${PING_WEB_ORIGIN:-http://localhost:$SERVE_PORT}"
  local db="${PING_WEB_RELAY_DB:-$DIST/demo-relay.db}"
  step "Serving the demo and its relay: open $origin/web/ (relay database $db; Ctrl-C to stop)"
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m ping_relay --db "sqlite:///$db" \
    --host "$SERVE_HOST" --port "$SERVE_PORT" --origin "$origin" --index /web/ \
    --retention "$SERVE_RETENTION" --max-retention "$SERVE_MAX_RETENTION" \
    --static "/web=$ROOT/web" --static "/dist/pyodide=$DIST/pyodide"
}

# Benchmarks side by side with core-crypto and ts-mls: one markdown
# table on stdout, also written to bench/RESULTS.md. PING_BENCH_QUICK=1 for a smoke run.
# The native column (bench/native): wasm/'s crate built for the host with rustup's cargo, in
# its own target directory, with wasm/Cargo.lock copied in so every shared crate is at the
# version the wasm module uses. Incremental (first build about 4 minutes on 2 cores).
BENCH_NATIVE_TARGET_DIR="$CACHE/bench-native"
BENCH_NATIVE_BIN="$BENCH_NATIVE_TARGET_DIR/release/ping_web_bench_native"

build_bench_native() {
  local cargo fp
  cargo=$(command -v cargo) || die "no cargo on PATH: the native benchmark needs rustup's toolchain"
  fp=$(fingerprint bench/native/src bench/native/Cargo.toml wasm/src wasm/Cargo.toml wasm/Cargo.lock)
  if fresh bench-native "$fp" && [[ -x "$BENCH_NATIVE_BIN" ]]; then
    note "native benchmark up to date"
    return
  fi
  step "Building the native benchmark (bench/native: wasm/'s crate for the host, release)"
  cp wasm/Cargo.lock bench/native/Cargo.lock
  (cd bench/native && CARGO_TARGET_DIR="$BENCH_NATIVE_TARGET_DIR" "$cargo" build --release --quiet)
  # Same versions as the wasm module: the only package the native lock may add is itself.
  local lock_pairs='/^name = /{n=$3} /^version = /{print n, $3}'
  local extra
  extra=$(comm -13 <(awk "$lock_pairs" wasm/Cargo.lock | sort) <(awk "$lock_pairs" bench/native/Cargo.lock | sort) \
    | grep -v '^"ping_web_bench_native" ' || true)
  [[ -z "$extra" ]] || die "bench/native resolved crates wasm/Cargo.lock does not pin: $extra"
  stamp bench-native "$fp"
}

run_bench() {
  build_bench_native
  step "Benchmarks: ping-web (Pyodide), its wasm from JS, native OpenMLS, core-crypto, ts-mls (Node)"
  local command="./build.sh bench"
  [[ "${PING_BENCH_QUICK:-}" == 1 ]] && command="PING_BENCH_QUICK=1 $command"
  PING_BENCH_COMMAND="$command" PING_BENCH_NATIVE="$BENCH_NATIVE_BIN" node bench/run.mjs
}

# JupyterLite: ./build.sh lite builds dist/lite/, a static site, offline. The
# builder (jupyterlite-core, jupyterlite-pyodide-kernel: requirements-lite.txt) lives in
# .cache/lite-venv. The site gets its own Pyodide (static/pyodide/: the npm runtime plus
# the wheels the kernel loads at start, requirements-lite-pyodide.txt, in its lock file)
# and a piplite index (pypi/: the ping_web wheel) where `%pip install ping_web`
# finds the wheel; PyPI fallback is off (tools/lite/jupyter-lite.json). Contents:
# docs/notebook.ipynb. Open lite/notebooks/index.html?path=notebook.ipynb on a server.
LITE_VENV="$CACHE/lite-venv"
LITE_SRC="$CACHE/lite/src"

lite_wheel() {  # lite_wheel DIR NAME==VERSION: the downloaded wheel file of that pin
  local name=${2%%==*} version=${2##*==} found
  found=$(find "$1" -maxdepth 1 -iname "$(echo "$name" | tr '-' '_')-$version-*.whl" \
    | grep -E '(-none-any|_wasm32)\.whl$' | sort | sed -n 1p)
  [[ -n "$found" ]] || die "no wheel for $2 in $1"
  echo "$found"
}

build_lite() {
  local lite_py="$LITE_VENV/bin/python" fp
  fp=$(fingerprint requirements-lite.txt)
  if ! fresh lite-venv "$fp" || [[ ! -x "$lite_py" ]]; then
    step "Creating .cache/lite-venv and installing requirements-lite.txt (JupyterLite builder)"
    python3 -m venv "$LITE_VENV"
    "$lite_py" -m pip install -q -r requirements-lite.txt
    stamp lite-venv "$fp"
  fi
  fp=$(fingerprint requirements-lite.txt requirements-lite-pyodide.txt requirements-pyodide.txt tools/lite \
    tools/pyodide_dist.py docs/notebook.ipynb node_modules/pyodide/package.json "$DIST"/ping_web-*.whl)
  if fresh lite "$fp" && [[ -f "$DIST/lite/jupyter-lite.json" ]]; then
    note "dist/lite up to date"
    return
  fi
  step "Building the JupyterLite site dist/lite (offline: local Pyodide, local wheels)"
  local start=$SECONDS wheels="$CACHE/lite/wheels"
  mkdir -p "$wheels"
  local kernel_pins
  kernel_pins=$(grep -vE '^(#|$)' requirements-lite-pyodide.txt)
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform any --implementation py --abi none \
    --python-version 3.14 -d "$wheels" $kernel_pins
  rm -rf "$LITE_SRC" "$DIST/lite"
  mkdir -p "$LITE_SRC/pypi"
  cp tools/lite/jupyter-lite.json "$LITE_SRC/"
  local kernel_wheels=() pin
  for pin in $kernel_pins; do kernel_wheels+=("$(lite_wheel "$wheels" "$pin")"); done
  "$PY" tools/pyodide_dist.py --pyodide node_modules/pyodide --out "$LITE_SRC/static/pyodide" "${kernel_wheels[@]}"
  cp "$DIST"/ping_web-*.whl "$LITE_SRC/pypi/"
  (cd "$LITE_SRC" && "$LITE_VENV/bin/jupyter" lite build --lite-dir "$LITE_SRC" --output-dir "$DIST/lite" \
    --contents "$ROOT/docs/notebook.ipynb" --apps lab --apps notebooks --no-sourcemaps --no-unused-shared-packages)
  [[ -f "$DIST/lite/static/pyodide/pyodide.mjs" && -f "$DIST/lite/files/notebook.ipynb" ]] \
    || die "dist/lite lacks its Pyodide or the notebook"
  note "dist/lite: $(du -sh "$DIST/lite" | cut -f1) in $((SECONDS - start)) s; open dist/lite/notebooks/index.html?path=notebook.ipynb on a server of the repository root"
  stamp lite "$fp"
}

case "${1:-all}" in
  lite) build_all; build_lite ;;
  all) build_all; run_demo ;;
  build) build_all ;;
  demo) build_all; run_demo ;;
  test) build_all; run_tests ;;
  serve) build_all; run_serve ;;
  bench)
    if [[ "${2:-}" == relay ]]; then run_bench_relay; else build_all; run_bench; fi ;;
  clean) rm -rf "$DIST" "$WASM_OUT"/*.js "$WASM_OUT"/*.wasm "$WASM_OUT/BUILD_INFO" "$STAMPS" "$CACHE/wasm-bindgen" ;;
  *) die "unknown command '$1' (try: ./build.sh, ./build.sh test, build, demo, serve, lite, bench, clean)" ;;
esac

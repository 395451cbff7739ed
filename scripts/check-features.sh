#!/usr/bin/env bash
# Builds (lints) every cargo feature of runscale's adapter crates alone, none, and the slim
# production set, so a combination nobody builds by default cannot rot: `cargo clippy` of the
# library and binary targets with warnings as errors. `scripts/test.sh` runs it; it can also
# run on its own. The features are read from the manifests, so a new adapter is checked with no
# edit here.
set -euo pipefail
cd "$(dirname "$0")/.."

features_of() { # PACKAGE -> its features, one per line, except "default"
  cargo metadata --no-deps --format-version 1 |
    jq -r --arg p "$1" '.packages[] | select(.name == $p) | .features | keys[] | select(. != "default")'
}

lint() { # PACKAGE FEATURES
  printf '%-20s %s\n' "$1" "${2:-(none)}"
  cargo clippy --quiet -p "$1" --lib --bins --no-default-features ${2:+--features "$2"} -- -D warnings
}

for package in runscale-providers runscale-backends runscale; do
  lint "$package" ""
  while read -r feature; do
    case "$feature" in
      # Internal features (turned on by every adapter feature of their role) and aws-ec2, whose
      # SDK alone takes minutes to compile: linted with every feature on (scripts/test.sh).
      any-provider | any-backend | aws-ec2 | backend-aws-ec2) continue ;;
    esac
    lint "$package" "$feature"
  done < <(features_of "$package")
done
# The slim production build of the README.
lint runscale "provider-github,backend-kubernetes"

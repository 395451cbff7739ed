// Builds the real gitlab-runner for runscale's real-agent tests (see scripts/test.sh).
// gitlab-runner's release tags (v16+, without a /vN module path) are not valid Go module
// versions and its go.mod has a replace directive, so `go install MODULE@VERSION` cannot take
// it: this module requires it at the pseudo-version the Go module proxy serves and builds it
// with `go build`. The upstream exclude is repeated because excludes only apply in the main
// module.
module runscale.test/agents/gitlab-runner

go 1.26.5

require gitlab.com/gitlab-org/gitlab-runner v1.11.1-0.20260903214710-fc1f1862bd91

exclude github.com/moby/moby v28.5.2+incompatible

//go:build tools

// Package tools names the program this module builds.
package tools

import _ "gitlab.com/gitlab-org/gitlab-runner"

// Package version holds the version every hoststack binary reports: its
// --version output, the agent's SessionNode status.engine.version and CSI
// GetPluginInfo, and the manager's start-up log.
package version

// Version is set at build time:
//
//	go build -ldflags "-X github.com/hoststack/hoststack/internal/version.Version=$(git describe --tags --always --dirty)"
//
// The Makefile, the Dockerfile and hack/images all stamp it; a plain
// `go build` reports "dev".
var Version = "dev"

// Package crd embeds the generated CustomResourceDefinitions so programs that
// run without an API server (the standalone agent) validate objects against
// exactly the schema the API server enforces.
package crd

import "embed"

// Bases holds bases/*.yaml, the CRDs `make manifests` generates.
//
//go:embed bases/*.yaml
var Bases embed.FS

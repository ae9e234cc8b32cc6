//go:build !dpdk

package dpdk

import (
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Endpoint is a DPDK-backed link endpoint. In this build (no dpdk tag) New
// never returns one; the type exists so callers compile either way.
type Endpoint struct {
	// The embedded interface is nil: no method of an Endpoint is ever
	// called in this build, because New never returns one.
	stack.LinkEndpoint
}

var _ stack.LinkEndpoint = (*Endpoint)(nil)

// New returns ErrNotBuilt: this binary was built without the dpdk tag.
func New(opts Options) (*Endpoint, error) { return nil, ErrNotBuilt }

// Close does nothing in this build.
func (e *Endpoint) Close() {}

// Shutdown does nothing in this build.
func (e *Endpoint) Shutdown() error { return nil }

// Stats is zero in this build.
func (e *Endpoint) Stats() Stats { return Stats{} }

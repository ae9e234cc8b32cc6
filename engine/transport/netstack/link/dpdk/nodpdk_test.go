//go:build !dpdk

package dpdk

import (
	"errors"
	"strings"
	"testing"
)

func TestNewWithoutDPDK(t *testing.T) {
	ep, err := New(Options{Interface: "eth0"})
	if ep != nil || !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("New = %v, %v; want nil, ErrNotBuilt", ep, err)
	}
	for _, want := range []string{"without DPDK support", "-tags dpdk", "libdpdk-dev"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

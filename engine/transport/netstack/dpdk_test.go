//go:build dpdk

package netstack_test

// With -tags dpdk (make test-dpdk) every transport test also runs on the
// DPDK link layer.
func init() { links = append(links, "dpdk") }

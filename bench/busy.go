package main

// The busy group (issue 16, point 7): the 64 KiB stream and the 64 B round
// trip, cut-through against TCP loopback, on a quiet machine and then
// while an unrelated process (a child of the bench that spins on one CPU)
// keeps about one core busy, as a background compile would.

import (
	"fmt"
	"os"
	"time"
)

// busyVariants are measured in both cases; the stream takes the 4 MiB
// FIFO variant too, to show what larger FIFOs buy under load.
var (
	busyStream = []string{"hoststack", "tcp-loopback", "hoststack-4MiB"}
	busyRR     = []string{"hoststack", "tcp-loopback"}
)

func runBusy(rep *Report, m measurer, variants []variant) {
	measure := func(load string) {
		for _, name := range busyStream {
			v, ok := variantNamed(variants, name)
			if !ok {
				continue
			}
			gbps, err := m.stream(v, 64<<10)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bench: busy: %s stream: %v\n", name, err)
				continue
			}
			rep.add("busy", "stream-64KiB-"+load, name, gbps, "GB/s")
		}
		for _, name := range busyRR {
			v, ok := variantNamed(variants, name)
			if !ok {
				continue
			}
			p50, p99, err := m.rr(v, 64)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bench: busy: %s rr: %v\n", name, err)
				continue
			}
			rep.add("busy", "rr-p50-"+load, name, float64(p50.Nanoseconds())/1e3, "us")
			rep.add("busy", "rr-p99-"+load, name, float64(p99.Nanoseconds())/1e3, "us")
		}
	}
	fmt.Fprintln(os.Stderr, "  quiet:")
	measure("quiet")

	c, err := startChild("spin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: busy:", err)
		return
	}
	defer c.kill()
	// The child says so once its loop is about to start.
	if _, err := c.expect("spinning", 0, nil); err != nil {
		fmt.Fprintln(os.Stderr, "bench: busy: spinner:", err)
		return
	}
	fmt.Fprintf(os.Stderr, "  one core busy (spinning child pid %d):\n", c.Pid)
	cpu0, _ := procCPU(c.Pid)
	t0 := time.Now()
	measure("busy")
	cpu1, _ := procCPU(c.Pid)
	// How much of a core the spinner really got while we measured: the
	// figures mean little if the scheduler starved it.
	rep.add("busy", "spinner-share", "spinner", 100*float64(cpu1-cpu0)/float64(time.Since(t0)), "% of a core")
	c.kill()
}

package main

// The busy group (issue 16, point 7): the 64 KiB stream and the 64 B round
// trip, cut-through against TCP loopback, on a quiet machine and while an
// unrelated process (a child of the bench spinning on one CPU) keeps about
// one core busy, as a background compile would. The two cases alternate
// round by round (the spinner stopped with SIGSTOP for the quiet rounds),
// and each figure is the median of its rounds: on a shared machine the
// noise of other work drifts, and alternating gives both cases the same.

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// busyStream and busyRR are the variants measured in both cases.
var (
	busyStream = []string{"hoststack", "tcp-loopback"}
	busyRR     = []string{"hoststack", "tcp-loopback"}
)

// busyRounds is the number of alternating quiet/busy rounds.
const busyRounds = 5

func runBusy(rep *Report, m measurer, variants []variant) {
	if load, err := loadAvg(); err == nil {
		rep.add("busy", "loadavg-1min-before", "machine", load, "runnable")
	}
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
	fmt.Fprintf(os.Stderr, "  %d rounds, quiet then one core busy (spinning child pid %d):\n", busyRounds, c.Pid)
	one := measurer{d: m.d, n: 1}
	stream := map[string][]float64{} // "load/variant" -> GB/s per round
	p50 := map[string][]float64{}
	p99 := map[string][]float64{}
	var spun, busyTime time.Duration
	for round := range busyRounds {
		for _, load := range []string{"quiet", "busy"} {
			sig := syscall.SIGSTOP
			if load == "busy" {
				sig = syscall.SIGCONT
			}
			if err := syscall.Kill(c.Pid, sig); err != nil {
				fmt.Fprintln(os.Stderr, "bench: busy: signal spinner:", err)
				return
			}
			cpu0, t0 := cpuOf(c.Pid), time.Now()
			for _, name := range busyStream {
				if v, ok := variantNamed(variants, name); ok {
					if r, err := streamOnce(v, 64<<10, m.d); err == nil {
						stream[load+"/"+name] = append(stream[load+"/"+name], r)
					} else {
						fmt.Fprintf(os.Stderr, "bench: busy: %s stream: %v\n", name, err)
					}
				}
			}
			for _, name := range busyRR {
				if v, ok := variantNamed(variants, name); ok {
					if a, b, err := one.rr(v, 64); err == nil {
						p50[load+"/"+name] = append(p50[load+"/"+name], float64(a.Nanoseconds())/1e3)
						p99[load+"/"+name] = append(p99[load+"/"+name], float64(b.Nanoseconds())/1e3)
					} else {
						fmt.Fprintf(os.Stderr, "bench: busy: %s rr: %v\n", name, err)
					}
				}
			}
			if load == "busy" {
				spun += cpuOf(c.Pid) - cpu0
				busyTime += time.Since(t0)
			}
		}
		fmt.Fprintf(os.Stderr, "    round %d/%d done\n", round+1, busyRounds)
	}
	c.kill()
	for _, load := range []string{"quiet", "busy"} {
		for _, name := range busyStream {
			if xs := stream[load+"/"+name]; len(xs) > 0 {
				rep.add("busy", "stream-64KiB-"+load, name, median(xs), "GB/s")
			}
		}
		for _, name := range busyRR {
			if xs := p50[load+"/"+name]; len(xs) > 0 {
				rep.add("busy", "rr-p50-"+load, name, median(xs), "us")
				rep.add("busy", "rr-p99-"+load, name, median(p99[load+"/"+name]), "us")
			}
		}
	}
	// How much of a core the spinner really got in the busy rounds: the
	// busy figures mean little if the scheduler starved it.
	if busyTime > 0 {
		rep.add("busy", "spinner-share", "spinner", 100*float64(spun)/float64(busyTime), "% of a core")
	}
}

func cpuOf(pid int) time.Duration {
	d, _ := procCPU(pid)
	return d
}

// loadAvg is the 1-minute load average: how busy the shared machine was.
func loadAvg() (float64, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("/proc/loadavg is empty")
	}
	return strconv.ParseFloat(f[0], 64)
}

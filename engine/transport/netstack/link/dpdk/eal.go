//go:build dpdk

package dpdk

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// EnvLogLevel overrides the EAL's log level: space-separated --log-level
// values (default "warning"; e.g. "debug pmd.net.af_xdp:debug" to see what
// a PMD does).
const EnvLogLevel = "HOSTSTACK_DPDK_LOG_LEVEL"

var eal struct {
	once sync.Once
	err  error
	args []string
}

// initEAL starts the process's one EAL, or returns why it could not.
func initEAL() error {
	eal.once.Do(func() { eal.err = startEAL() })
	return eal.err
}

// ealArgs builds the EAL command line. lcore 0 gets every CPU the process
// may run on, so that neither the thread calling rte_eal_init nor the
// control threads end up pinned to one CPU.
func ealArgs() ([]string, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("sched_getaffinity: %w", err)
	}
	var cpus []string
	for i := 0; i < len(set)*64 && len(cpus) < set.Count(); i++ {
		if set.IsSet(i) {
			cpus = append(cpus, strconv.Itoa(i))
		}
	}
	level := os.Getenv(EnvLogLevel)
	if level == "" {
		level = "warning"
	}
	args := []string{
		"hoststack",
		"--no-huge", "-m", "512",
		"--no-pci",
		"--no-shconf",
		"--no-telemetry",
		"--file-prefix=hoststack-" + strconv.Itoa(os.Getpid()),
		"--lcores=0@(" + strings.Join(cpus, ",") + ")",
	}
	for _, l := range strings.Fields(level) {
		args = append(args, "--log-level="+l)
	}
	return args, nil
}

func startEAL() error {
	args, err := ealArgs()
	if err != nil {
		return fmt.Errorf("dpdk: EAL arguments: %w", err)
	}
	eal.args = args
	done := make(chan error, 1)
	go func() {
		// Never unlocked: the goroutine ends with its thread locked, so Go
		// destroys the thread, and with it lcore 0's identity and the
		// affinity rte_eal_init gave it.
		runtime.LockOSThread()
		if err := ealInit(args); err != nil {
			done <- fmt.Errorf("dpdk: rte_eal_init %s: %w (one process gets one EAL; it cannot be retried)",
				strings.Join(args[1:], " "), err)
			return
		}
		done <- nil
	}()
	return <-done
}

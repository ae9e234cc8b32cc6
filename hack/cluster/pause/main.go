// Command pause is the sandbox ("pause") container of hack/cluster's node: it holds
// the pod's namespaces, reaps orphans when it is the pod's PID 1, and exits on
// SIGTERM or SIGINT. Built static and put in an image by hack/cluster, so the node
// pulls nothing.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			return
		}
		// Reap every exited child; more than one may be behind one SIGCHLD.
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// component is one daemon of the cluster, started detached (its own session, output
// to its log file) so it outlives `up`, and found again through its pid file.
type component struct {
	name string
	bin  string
	args []string
}

// running returns the pid of c when its pid file names a live process running c's
// binary; 0 otherwise.
func (l layout) running(name, bin string) int {
	b, err := os.ReadFile(l.pidFile(name))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	if !alive(pid) {
		return 0
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return 0
	}
	// A rebuilt binary shows as "<path> (deleted)" in a process still running the old one.
	if strings.TrimSuffix(exe, " (deleted)") != bin {
		return 0
	}
	return pid
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Field 3, after the parenthesised command name (which may hold spaces).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z'
}

// start runs c unless it already runs. It returns whether it started it.
func (l layout) start(c component) (bool, error) {
	if pid := l.running(c.name, c.bin); pid != 0 {
		logf("%s already running (pid %d)", c.name, pid)
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(l.logFile(c.name)), 0o755); err != nil {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(l.pidFile(c.name)), 0o755); err != nil {
		return false, err
	}
	logFile, err := os.OpenFile(l.logFile(c.name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return false, fmt.Errorf("opening log of %s: %w", c.name, err)
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "\n==== %s: %s %s\n", time.Now().Format(time.RFC3339), c.bin, strings.Join(c.args, " "))
	cmd := exec.Command(c.bin, c.args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Dir = l.dir
	// Its own session: neither `up` exiting nor a Ctrl-C in the caller's terminal stops it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return false, fmt.Errorf("starting %s: %w", c.name, err)
	}
	pid := cmd.Process.Pid
	if err := writeFile(l.pidFile(c.name), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		_ = cmd.Process.Kill()
		return false, err
	}
	// Reap it if it dies while `up` still runs; afterwards init does.
	go func() { _ = cmd.Wait() }()
	logf("%s started (pid %d, log %s)", c.name, pid, l.logFile(c.name))
	return true, nil
}

// stop sends SIGTERM to the component of the pid file, then SIGKILL after grace.
func (l layout) stop(name, bin string, grace time.Duration) error {
	pid := l.running(name, bin)
	defer os.Remove(l.pidFile(name))
	if pid == 0 {
		return nil
	}
	if err := killWait(pid, grace); err != nil {
		return fmt.Errorf("stopping %s: %w", name, err)
	}
	logf("%s stopped (pid %d)", name, pid)
	return nil
}

// killWait terminates pid: SIGTERM, and SIGKILL if it is still there after grace.
func killWait(pid int, grace time.Duration) error {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if waitGone(pid, grace) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if waitGone(pid, 10*time.Second) {
		return nil
	}
	return fmt.Errorf("pid %d survived SIGKILL", pid)
}

func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !alive(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pidsMatching lists processes whose command line contains every one of needles.
func pidsMatching(needles ...string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmdline := strings.ReplaceAll(string(b), "\x00", " ")
		ok := true
		for _, n := range needles {
			if !strings.Contains(cmdline, n) {
				ok = false
				break
			}
		}
		if ok {
			pids = append(pids, pid)
		}
	}
	return pids
}

// run runs a command to completion, returning its combined output in the error.
func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

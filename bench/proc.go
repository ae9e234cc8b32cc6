package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// What /proc says about a process, for the scale group: the engine runs
// in this process, the apps in a child, so each side's figures are its own.

// procStatus holds the fields of /proc/<pid>/status that matter here.
type procStatus struct {
	RSS, Anon, File, Shmem int64 // bytes (VmRSS, RssAnon, RssFile, RssShmem)
	Threads                int
}

// parseStatus reads the fields of procStatus out of a /proc/<pid>/status
// text; a field it lacks is an error (a kernel without RssAnon would make
// every private-memory figure silently zero).
func parseStatus(r io.Reader) (procStatus, error) {
	var st procStatus
	seen := 0
	kb := func(v string) (int64, error) {
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		return n << 10, err
	}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "VmRSS":
			st.RSS, err = kb(v)
		case "RssAnon":
			st.Anon, err = kb(v)
		case "RssFile":
			st.File, err = kb(v)
		case "RssShmem":
			st.Shmem, err = kb(v)
		case "Threads":
			st.Threads, err = strconv.Atoi(strings.TrimSpace(v))
		default:
			continue
		}
		if err != nil {
			return st, fmt.Errorf("status field %s: %w", k, err)
		}
		seen++
	}
	if err := sc.Err(); err != nil {
		return st, err
	}
	if seen != 5 {
		return st, fmt.Errorf("status: %d of the 5 fields VmRSS, RssAnon, RssFile, RssShmem, Threads found", seen)
	}
	return st, nil
}

// status reads /proc/<pid>/status ("self" for this process).
func status(pid string) (procStatus, error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return procStatus{}, err
	}
	defer f.Close()
	st, err := parseStatus(f)
	if err != nil {
		return st, fmt.Errorf("/proc/%s/status: %w", pid, err)
	}
	return st, nil
}

// memfdUsage is what the memfds a process holds open take: the bytes
// resident in them (the shmem pages really allocated, each file once,
// however often it is mapped) and their sizes.
type memfdUsage struct {
	Files              int
	Resident, Reserved int64
}

// memfds sums the memfds among the open fds of process pid ("self").
func memfds(pid string) (memfdUsage, error) {
	dir := "/proc/" + pid + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return memfdUsage{}, err
	}
	var u memfdUsage
	seen := map[uint64]bool{}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		target, err := os.Readlink(p)
		if err != nil || !strings.HasPrefix(target, "/memfd:") {
			continue // closed meanwhile, or not a memfd
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil || seen[st.Ino] {
			continue
		}
		seen[st.Ino] = true
		u.Files++
		u.Resident += st.Blocks * 512
		u.Reserved += st.Size
	}
	return u, nil
}

// fdCount is the number of open fds of process pid.
func fdCount(pid string) (int, error) {
	ents, err := os.ReadDir("/proc/" + pid + "/fd")
	return len(ents), err
}

// selfCPU is the CPU time (user + system) this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuWindow is a window of this process's CPU time.
type cpuWindow struct {
	cpu   time.Duration
	start time.Time
}

func startCPU() cpuWindow { return cpuWindow{selfCPU(), time.Now()} }

// share is the CPU this process used since the window opened, as a share
// of one core, and how long the window has been open.
func (w cpuWindow) share() (float64, time.Duration) {
	el := time.Since(w.start)
	return float64(selfCPU()-w.cpu) / float64(el), el
}

// parseStatCPU returns utime+stime (fields 14 and 15, in clock ticks) of a
// /proc/<pid>/stat line; the command name (field 2) may hold spaces and
// parentheses, so fields are counted after its closing parenthesis.
func parseStatCPU(line string) (ticks int64, err error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat: no command name")
	}
	f := strings.Fields(line[i+1:])
	// f[0] is field 3 (state): utime is field 14 → f[11], stime f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("stat: %d fields after the command name", len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("stat: utime %q stime %q", f[11], f[12])
	}
	return u + s, nil
}

// procCPU is the CPU time of process pid, at the kernel's USER_HZ (100 on
// Linux everywhere that matters) resolution.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	t, err := parseStatCPU(string(b))
	return time.Duration(t) * (time.Second / 100), err
}

// raiseFDLimit lifts RLIMIT_NOFILE (soft and hard) to n when it is lower:
// 100,000 sessions through the kernel transport take more fds than the
// usual 20k hard limit. Needs CAP_SYS_RESOURCE to raise the hard limit.
func raiseFDLimit(n uint64) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Cur >= n && rl.Max >= n {
		return nil
	}
	rl.Cur = max(rl.Cur, n)
	rl.Max = max(rl.Max, n)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("RLIMIT_NOFILE to %d: %w", n, err)
	}
	return nil
}

package afxdp

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// unmapSocket unmaps every mapping of the socket fd in this process. The
// kernel names socket mappings "socket:[<inode>]" in /proc/self/maps.
func unmapSocket(fd int) {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return
	}
	name := fmt.Sprintf("socket:[%d]", st.Ino)
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return
	}
	var ranges [][2]uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasSuffix(line, name) {
			continue
		}
		span, _, _ := strings.Cut(line, " ")
		lo, hi, ok := strings.Cut(span, "-")
		if !ok {
			continue
		}
		l, err1 := strconv.ParseUint(lo, 16, 64)
		h, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && h > l {
			ranges = append(ranges, [2]uint64{l, h})
		}
	}
	f.Close()
	for _, r := range ranges {
		unix.Syscall(unix.SYS_MUNMAP, uintptr(r[0]), uintptr(r[1]-r[0]), 0)
	}
}

package shm

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// requiredSeals are the seals OpenSegment insists on: without them the peer
// could ftruncate the file and every access past the new end would SIGBUS us.
const requiredSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW

// Segment is a sealed memfd mapped once, MAP_SHARED, read-write.
type Segment struct {
	mu   sync.Mutex
	fd   int
	b    []byte
	size int
}

// CreateSegment creates a memfd of size bytes (rounded up to the page size),
// seals it against shrink, grow and further sealing, and maps it.
func CreateSegment(name string, size int) (*Segment, error) {
	if size <= 0 {
		return nil, fmt.Errorf("%w: segment size %d", ErrInvalid, size)
	}
	pg := unix.Getpagesize()
	if size > (1<<47)-pg {
		return nil, fmt.Errorf("%w: segment size %d too large", ErrInvalid, size)
	}
	size = (size + pg - 1) &^ (pg - 1)
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("shm: memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: ftruncate: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS,
		unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: F_ADD_SEALS: %w", err)
	}
	return mapSegment(fd, size)
}

// OpenSegment maps a segment received from a peer. It takes ownership of fd
// (closed on error too). It refuses an fd that is not a memfd sealed with
// F_SEAL_SHRINK|F_SEAL_GROW. The size comes from fstat, after the seals
// are verified, so it cannot change afterwards.
func OpenSegment(fd int) (*Segment, error) {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: F_GET_SEALS: %v", ErrNotSealed, err)
	}
	if seals&requiredSeals != requiredSeals {
		unix.Close(fd)
		return nil, fmt.Errorf("%w (seals %#x)", ErrNotSealed, seals)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: fstat: %w", err)
	}
	if st.Size <= 0 || st.Size > 1<<47 {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: segment size %d", ErrInvalid, st.Size)
	}
	return mapSegment(fd, int(st.Size))
}

func mapSegment(fd, size int) (*Segment, error) {
	b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: mmap: %w", err)
	}
	return &Segment{fd: fd, b: b, size: size}, nil
}

// FD returns the memfd (to pass with SCM_RIGHTS). It stays owned by the
// Segment; -1 after Close.
func (s *Segment) FD() int { s.mu.Lock(); defer s.mu.Unlock(); return s.fd }

// Size returns the mapped size in bytes.
func (s *Segment) Size() int { return s.size }

// Bytes returns the whole mapping. It is shared with the peer: treat every
// byte as untrusted and possibly changing under you.
func (s *Segment) Bytes() []byte { s.mu.Lock(); defer s.mu.Unlock(); return s.b }

// Punch gives the memory of [off, off+n) back to the kernel: the whole pages
// in it are removed from the memfd (they read as zeros; a write faults in a
// fresh page). For an extent that was freed, so that a closed session's
// fifos stop costing memory while the segment lives on.
func (s *Segment) Punch(off, n int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return ErrClosed
	}
	if off < 0 || n < 0 || off > s.size || n > s.size-off {
		return fmt.Errorf("%w: punch [%d, %d) of a %d-byte segment", ErrInvalid, off, off+n, s.size)
	}
	pg := unix.Getpagesize()
	start, end := (off+pg-1)&^(pg-1), (off+n)&^(pg-1)
	if end <= start {
		return nil
	}
	if err := unix.Fallocate(s.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(start), int64(end-start)); err != nil {
		return fmt.Errorf("shm: punching [%d, %d): %w", start, end, err)
	}
	return nil
}

// Resident returns the bytes of the segment backed by memory: the pages
// written (by anyone who maps it) and not punched since. Segments are
// sparse: an untouched page costs nothing.
func (s *Segment) Resident() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return 0, ErrClosed
	}
	var st unix.Stat_t
	if err := unix.Fstat(s.fd, &st); err != nil {
		return 0, fmt.Errorf("shm: fstat: %w", err)
	}
	return st.Blocks * 512, nil
}

// Close unmaps and closes the segment. It is idempotent. Fifos and queues in
// the segment must no longer be used: the memory is gone.
func (s *Segment) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return nil
	}
	err1 := unix.Munmap(s.b)
	err2 := unix.Close(s.fd)
	s.fd = -1
	s.b = nil
	if err1 != nil {
		return fmt.Errorf("shm: munmap: %w", err1)
	}
	if err2 != nil {
		return fmt.Errorf("shm: close: %w", err2)
	}
	return nil
}

//go:build dpdk

package dpdk

/*
#cgo pkg-config: libdpdk
#cgo CFLAGS: -O2 -Wno-deprecated-declarations

#include <stdlib.h>
#include "hs.h"
*/
import "C"

import (
	"fmt"
	"syscall"
	"unsafe"
)

const burst = C.HS_BURST

// dpdkErr turns a negative errno-style DPDK return into an error.
func dpdkErr(what string, rc C.int) error {
	if rc >= 0 {
		return nil
	}
	return fmt.Errorf("dpdk: %s: %w", what, syscall.Errno(-rc))
}

func errnoOf(n int) error { return syscall.Errno(n) }

// rteErrno is rte_errno of the calling thread, for functions that return
// NULL.
func rteErrno() syscall.Errno { return syscall.Errno(C.hs_errno()) }

// ealInit calls rte_eal_init. The strings stay allocated for the life of
// the process: the EAL may keep pointers into its argv.
func ealInit(args []string) error {
	argv := (**C.char)(C.calloc(C.size_t(len(args)+1), C.size_t(unsafe.Sizeof((*C.char)(nil)))))
	av := unsafe.Slice(argv, len(args)+1)
	for i, a := range args {
		av[i] = C.CString(a)
	}
	if rc := C.hs_eal_init(C.int(len(args)), argv); rc < 0 {
		return syscall.Errno(-rc)
	}
	return nil
}

// newBurst allocates a burst array in C memory; freed with freeBurst.
func newBurst() *C.struct_hs_burst {
	return (*C.struct_hs_burst)(C.calloc(1, C.size_t(unsafe.Sizeof(C.struct_hs_burst{}))))
}

func freeBurst(b *C.struct_hs_burst) { C.free(unsafe.Pointer(b)) }

// newTxq allocates an empty pending-TX queue in C memory; freed with
// freeTxq.
func newTxq() *C.struct_hs_txq {
	return (*C.struct_hs_txq)(C.calloc(1, C.size_t(unsafe.Sizeof(C.struct_hs_txq{}))))
}

func freeTxq(q *C.struct_hs_txq) { C.free(unsafe.Pointer(q)) }

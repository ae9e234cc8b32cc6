package csi

import "golang.org/x/sys/unix"

const (
	oPath      = unix.O_PATH
	oDirectory = unix.O_DIRECTORY
)

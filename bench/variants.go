package main

import "os"

// setupVariants returns the transports to compare. The hoststack variants are
// added once the engine and client exist.
func setupVariants() ([]variant, func(), error) {
	dir, err := tempDir()
	if err != nil {
		return nil, nil, err
	}
	return kernelVariants(dir), func() { os.RemoveAll(dir) }, nil
}

func idleSessionMemory() (float64, bool, error) { return 0, false, nil }

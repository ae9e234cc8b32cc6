//go:build race

package rulesbench

const raceEnabled = true

/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// certNotAfter exports each usable CertKeyPair's expiry so alerts can fire
// before it happens. A series exists only while its CertKeyPair exists and
// its certificate parses: the reconciler deletes it otherwise, so no gauge
// outlives its object.
var certNotAfter = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Namespace: "hoststack",
	Subsystem: "certkeypair",
	Name:      "not_after_timestamp_seconds",
	Help:      "When the certificate chain of a CertKeyPair expires (its earliest notAfter), as a Unix time.",
}, []string{"namespace", "name"})

func init() {
	metrics.Registry.MustRegister(certNotAfter)
}

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
// outlives its object. The label is the CertKeyPair's "namespace/name", not
// "namespace", which Prometheus reserves for the scraped target's.
var certNotAfter = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Namespace: "hoststack",
	Subsystem: "certkeypair",
	Name:      "not_after_timestamp_seconds",
	Help:      "When the certificate chain of a CertKeyPair expires (its earliest notAfter), as a Unix time.",
}, []string{"certkeypair"})

// The pod webhook's own health, apart from the controllers': whether its
// serving certificate is in place, and how often writing or renewing it or
// serving failed.
var (
	webhookCertReady = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "hoststack", Subsystem: "webhook", Name: "certificate_ready",
		Help: "1 when the last check of the pod webhook's serving certificate succeeded, 0 when it could not be written or renewed.",
	})
	webhookCertFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "hoststack", Subsystem: "webhook", Name: "certificate_failures_total",
		Help: "Checks of the pod webhook's serving certificate that failed to write or renew it.",
	})
	webhookServeFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "hoststack", Subsystem: "webhook", Name: "server_failures_total",
		Help: "Times the pod webhook server failed to start or stopped serving.",
	})
)

func init() {
	metrics.Registry.MustRegister(certNotAfter, webhookCertReady, webhookCertFailures, webhookServeFailures)
}

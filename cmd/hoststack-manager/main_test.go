/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "")
	c, err := parseFlags(nil)
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.leaderElect || !c.metricsSecure || c.metricsAddr != ":8443" || c.probeAddr != ":8081" ||
		c.gracefulShutdown != 30*time.Second || c.maxConcurrentReconcile != 2 {
		t.Errorf("unexpected defaults: %+v", c)
	}
	if c.webhookPort != 9443 || !c.manageWebhookCerts || c.webhookServiceName != "hoststack-webhook" ||
		c.webhookServiceNS != "hoststack-system" || c.webhookConfigName != "hoststack-pod-injector" ||
		c.webhookCertSecret != "hoststack-webhook-cert" || c.webhookCertDir == "" {
		t.Errorf("unexpected webhook defaults: %+v", c)
	}

	// The webhook's namespace is the manager's own.
	t.Setenv("POD_NAMESPACE", "hs-own")
	if c, err = parseFlags(nil); err != nil || c.webhookServiceNS != "hs-own" {
		t.Errorf("with POD_NAMESPACE=hs-own: webhook namespace %q, %v", c.webhookServiceNS, err)
	}

	c, err = parseFlags([]string{"--webhook-port=0", "--manage-webhook-certs=false", "--webhook-cert-dir=/certs",
		"--webhook-cert-extra-names=127.0.0.1, localhost"})
	if err != nil {
		t.Fatalf("parse webhook flags: %v", err)
	}
	if c.webhookPort != 0 || c.manageWebhookCerts || c.webhookCertDir != "/certs" ||
		strings.Join(splitList(c.webhookCertExtraNames), "|") != "127.0.0.1|localhost" {
		t.Errorf("webhook flags not applied: %+v", c)
	}

	c, err = parseFlags([]string{"--leader-elect", "--leader-election-namespace=hs", "--watch-namespaces=a,b",
		"--metrics-bind-address=0", "--zap-log-level=debug", "--leader-election-lease-duration=30s"})
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if !c.leaderElect || c.leaderElectionNS != "hs" || c.watchNamespaces != "a,b" || c.metricsAddr != "0" || c.leaseDuration != 30*time.Second {
		t.Errorf("flags not applied: %+v", c)
	}

	for _, bad := range [][]string{
		{"--max-concurrent-reconciles=0"},
		{"--webhook-port=70000"},
		{"--webhook-port=-1"},
		{"--webhook-config-name="},
		{"--no-such-flag"},
		{"stray"},
	} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("%v accepted", bad)
		} else if strings.TrimSpace(err.Error()) == "" {
			t.Errorf("%v: empty error", bad)
		}
	}
}

/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package controllers holds the hoststack-manager reconcilers, one per kind:
// CertKeyPair (checks the TLS Secret), SessionRule (resolves its
// AppNamespace, detects conflicting matches) and AppNamespace (checks what
// the schema cannot, aggregates SessionNode reports). Each reconcile loads,
// evaluates with pure functions and writes status with one patch. It also
// holds the mutating pod webhook that attaches pods to their AppNamespace
// (PodInjector) and the manager of its serving certificates (WebhookCerts).
//
// +kubebuilder:webhookconfiguration:mutating=true,name=hoststack-pod-injector
package controllers

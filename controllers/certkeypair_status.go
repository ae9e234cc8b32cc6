/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// setKeyPairStatus writes a verdict into a CertKeyPair's status: the leaf's
// facts when tls.crt parsed (cleared otherwise, so status never shows a
// previous Secret's certificate), SecretValid and Ready.
func setKeyPairStatus(pair *hsv1.CertKeyPair, v keyPairVerdict) {
	st := &pair.Status
	st.ObservedGeneration = pair.Generation
	if leaf := v.Leaf; leaf != nil {
		st.Subject = leaf.Subject.String()
		st.DNSNames = append([]string(nil), leaf.DNSNames...)
		notAfter := metav1.NewTime(v.NotAfter.UTC())
		st.NotAfter = &notAfter
		st.FingerprintSHA256 = fingerprintSHA256(leaf)
	} else {
		st.Subject, st.DNSNames, st.NotAfter, st.FingerprintSHA256 = "", nil, nil, ""
	}
	status := metav1.ConditionFalse
	if v.Valid() {
		status = metav1.ConditionTrue
	}
	for _, t := range []string{hsv1.ConditionSecretValid, hsv1.ConditionReady} {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type:               t,
			Status:             status,
			Reason:             v.Reason,
			Message:            v.Message,
			ObservedGeneration: pair.Generation,
		})
	}
}

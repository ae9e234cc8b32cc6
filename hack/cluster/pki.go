package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// One CA signs every serving and client certificate of this throwaway cluster; the
// service-account tokens get their own key pair, as the API server requires.

// certSpec is one leaf certificate.
type certSpec struct {
	file   string // base name under pki/: <file>.crt and <file>.key
	cn     string
	orgs   []string
	server bool
	client bool
	dns    []string
	ips    []net.IP
}

type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// ensurePKI makes (once) the CA, the service-account key pair and every certificate,
// and (each time, they are cheap) the kubeconfigs.
func ensurePKI(l layout, n node) error {
	authority, err := ensureCA(l)
	if err != nil {
		return err
	}
	if err := ensureSAKey(l); err != nil {
		return err
	}
	apiIPs := []net.IP{n.ip, net.ParseIP(kubernetesSvc), net.IPv4(127, 0, 0, 1)}
	specs := []certSpec{
		{file: "apiserver", cn: "kube-apiserver", server: true, ips: apiIPs,
			dns: []string{"localhost", n.name, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		// The API server's client certificate towards kubelets (logs, exec, port-forward);
		// bound to system:kubelet-api-admin by bootstrapRBAC.
		{file: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", client: true},
		{file: "admin", cn: "hoststack-cluster-admin", orgs: []string{"system:masters"}, client: true},
		{file: "controller-manager", cn: "system:kube-controller-manager", client: true},
		{file: "scheduler", cn: "system:kube-scheduler", client: true},
		{file: "kube-proxy", cn: "system:kube-proxy", client: true},
		{file: "kubelet-client", cn: "system:node:" + n.name, orgs: []string{"system:nodes"}, client: true},
		{file: "kubelet-serving", cn: n.name, server: true, ips: []net.IP{n.ip, net.IPv4(127, 0, 0, 1)}, dns: []string{n.name, "localhost"}},
	}
	for _, s := range specs {
		if err := ensureCert(l, authority, s); err != nil {
			return err
		}
	}
	server := fmt.Sprintf("https://%s:%d", n.ip, apiserverPort)
	for _, kc := range []struct{ name, cert string }{
		{"admin", "admin"},
		{"controller-manager", "controller-manager"},
		{"scheduler", "scheduler"},
		{"kube-proxy", "kube-proxy"},
		{"kubelet", "kubelet-client"},
	} {
		if err := writeKubeconfig(l, kc.name, server, kc.cert); err != nil {
			return err
		}
	}
	return nil
}

func ensureCA(l layout) (ca, error) {
	certPath, keyPath := l.pki("ca.crt"), l.pki("ca.key")
	if exists(certPath) && exists(keyPath) {
		cert, key, err := loadPair(certPath, keyPath)
		if err != nil {
			return ca{}, fmt.Errorf("loading the cluster CA: %w", err)
		}
		return ca{cert: cert, key: key}, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return ca{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "hoststack-cluster-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(1, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return ca{}, fmt.Errorf("self-signing the cluster CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return ca{}, err
	}
	// Key first: a crash in between leaves no CA certificate without its key.
	if err := writeKey(keyPath, key); err != nil {
		return ca{}, err
	}
	if err := writeFile(certPath, pemCert(der), 0o644); err != nil {
		return ca{}, err
	}
	return ca{cert: cert, key: key}, nil
}

func ensureCert(l layout, authority ca, s certSpec) error {
	certPath, keyPath := l.pki(s.file+".crt"), l.pki(s.file+".key")
	if exists(certPath) && exists(keyPath) {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: s.cn, Organization: s.orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     authority.cert.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		DNSNames:     s.dns,
		IPAddresses:  s.ips,
	}
	if s.server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if s.client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, authority.cert, key.Public(), authority.key)
	if err != nil {
		return fmt.Errorf("signing %s: %w", s.file, err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	return writeFile(certPath, pemCert(der), 0o644)
}

// ensureSAKey makes the key pair that signs (sa.key) and verifies (sa.pub)
// service-account tokens.
func ensureSAKey(l layout) error {
	if exists(l.pki("sa.key")) && exists(l.pki("sa.pub")) {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	if err := writeKey(l.pki("sa.key"), key); err != nil {
		return err
	}
	return writeFile(l.pki("sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

func writeKubeconfig(l layout, name, server, certFile string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[networkName] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: l.pki("ca.crt")}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificate: l.pki(certFile + ".crt"), ClientKey: l.pki(certFile + ".key")}
	cfg.Contexts[networkName] = &clientcmdapi.Context{Cluster: networkName, AuthInfo: name}
	cfg.CurrentContext = networkName
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("rendering kubeconfig %s: %w", name, err)
	}
	return writeFile(l.kubeconfig(name), b, 0o600)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func loadPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	cblock, _ := pem.Decode(cb)
	kblock, _ := pem.Decode(kb)
	if cblock == nil || kblock == nil {
		return nil, nil, errors.New("not PEM")
	}
	cert, err := x509.ParseCertificate(cblock.Bytes)
	if err != nil {
		return nil, nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kblock.Bytes)
	if err != nil {
		return nil, nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("key cannot sign")
	}
	return cert, signer, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

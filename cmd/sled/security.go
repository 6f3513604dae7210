package main

import (
	"fmt"
	"net"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/infra"
)

// clientAuthFlags registers a role's NATS credential and TLS flags.
func clientAuthFlags(cmd *cobra.Command, a *infra.ClientAuth) {
	f := cmd.Flags()
	f.StringVar(&a.Creds, "creds", "", "NATS credentials file (.creds, from `sled creds issue` or `sled up --auth --creds-dir`)")
	f.StringVar(&a.TLS.CAFile, "tls-ca", "", "CA certificate (PEM) the NATS server's certificate must chain to; turns TLS on")
	f.StringVar(&a.TLS.CertFile, "tls-cert", "", "client certificate (PEM) for servers that require mutual TLS")
	f.StringVar(&a.TLS.KeyFile, "tls-key", "", "client certificate's key (PEM)")
}

// serverTLSFlags registers an embedded server's TLS flags.
func serverTLSFlags(cmd *cobra.Command, t *infra.TLSFiles) {
	f := cmd.Flags()
	f.StringVar(&t.CertFile, "tls-cert", "", "server certificate (PEM): clients (and leaf nodes) must then use TLS")
	f.StringVar(&t.KeyFile, "tls-key", "", "server certificate's key (PEM)")
	f.StringVar(&t.CAFile, "tls-ca", "", "CA (PEM) that client certificates chain to, with --tls-verify; also what this process's own clients check the server with")
	f.BoolVar(&t.VerifyClients, "tls-verify", false, "require client certificates signed by --tls-ca (mutual TLS)")
}

// loopback reports whether host (a listen address's host) only listens on
// this machine.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkExposure refuses a listener beyond loopback without authentication:
// auth is the default for anything a network can reach, and running without it
// must be asked for by name.
func checkExposure(host string, auth, insecure bool, authFlag string) error {
	if auth || insecure || loopback(host) {
		return nil
	}
	return fmt.Errorf("NATS would listen on %s with no authentication: anyone who can reach it could read every prompt and forge results; pass %s, or --insecure-no-auth to accept that", host, authFlag)
}

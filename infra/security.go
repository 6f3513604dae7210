package infra

import (
	"crypto/tls"
	"fmt"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/sled-project/sled/natsauth"
)

// TLSFiles names PEM files for a TLS connection. For a server, CertFile and
// KeyFile are its certificate and key, and CAFile (optional) the authority
// client certificates must chain to when VerifyClients is set. For a client,
// CAFile is the authority the server's certificate must chain to (empty: the
// system roots) and CertFile/KeyFile its own certificate when the server
// asks for one.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
	// VerifyClients (servers only) requires every client to present a
	// certificate signed by CAFile (mutual TLS).
	VerifyClients bool
}

func (t TLSFiles) enabled() bool { return t.CertFile != "" && t.KeyFile != "" }

// Enabled reports whether t, as a server's, turns TLS on (a certificate and
// key are set).
func (t TLSFiles) Enabled() bool { return t.enabled() }

func (t TLSFiles) serverConfig() (*tls.Config, error) {
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: t.CertFile, KeyFile: t.KeyFile, CaFile: t.CAFile, Verify: t.CAFile != "" && t.VerifyClients,
	})
	if err != nil {
		return nil, fmt.Errorf("infra: server TLS: %w", err)
	}
	return tc, nil
}

// ClientConfig is the client-side tls.Config of t (used for leaf remotes).
func (t TLSFiles) ClientConfig() (*tls.Config, error) {
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: t.CertFile, KeyFile: t.KeyFile, CaFile: t.CAFile})
	if err != nil {
		return nil, fmt.Errorf("infra: client TLS: %w", err)
	}
	// GenTLSConfig puts the CA in ClientCAs (it is built for servers); a
	// client checks the server against RootCAs.
	tc.RootCAs = tc.ClientCAs
	return tc, nil
}

// ClientAuth is how a SLED service or device proves who it is to NATS and
// checks the server. The zero value connects anonymously in plain text.
type ClientAuth struct {
	// Creds is a .creds file issued by natsauth (sled creds issue, sled up
	// --auth --creds-dir). The connection then uses the identity's own inbox
	// prefix (natsauth.InboxPrefix), the only reply subjects its permissions
	// let it receive.
	Creds string
	// TLS: CAFile to check the server (and CertFile/KeyFile for mutual TLS).
	// Setting any of them makes the connection require TLS.
	TLS TLSFiles
}

// Options returns the nats.Options for a.
func (a ClientAuth) Options() ([]nats.Option, error) {
	var opts []nats.Option
	if a.Creds != "" {
		id, err := natsauth.CredsIdentity(a.Creds)
		if err != nil {
			return nil, fmt.Errorf("infra: credentials: %w", err)
		}
		opts = append(opts, nats.UserCredentials(a.Creds), nats.CustomInboxPrefix(natsauth.InboxPrefix(id.ID)))
	}
	if a.TLS.CAFile != "" {
		opts = append(opts, nats.RootCAs(a.TLS.CAFile))
	}
	if a.TLS.CertFile != "" || a.TLS.KeyFile != "" {
		opts = append(opts, nats.ClientCert(a.TLS.CertFile, a.TLS.KeyFile))
	}
	return opts, nil
}

package natsauth

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
)

// Trust is what a server needs to check SLED credentials: the operator and
// the two account JWTs, all public. Copy an authority's *.jwt files to a
// server (or an edge site's leaf node) and point it at them; no seed is needed.
type Trust struct {
	dir      string
	operator *jwt.OperatorClaims
	system   string // public key
	account  string // public key
	resolver *server.MemAccResolver
	accJWT   []byte
}

// LoadTrust reads operator.jwt, system.jwt and account.jwt from dir.
func LoadTrust(dir string) (*Trust, error) {
	read := func(name string) (string, error) {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if os.IsNotExist(err) {
			return "", fmt.Errorf("%w %s: %s is missing (make one with `sled creds init`)", ErrNoAuthority, dir, name)
		}
		if err != nil {
			return "", fmt.Errorf("natsauth: %w", err)
		}
		return strings.TrimSpace(string(data)), nil
	}
	ojwt, err := read(OperatorFile)
	if err != nil {
		return nil, err
	}
	oc, err := jwt.DecodeOperatorClaims(ojwt)
	if err != nil {
		return nil, fmt.Errorf("natsauth: %s: %w", OperatorFile, err)
	}
	t := &Trust{dir: dir, operator: oc, resolver: &server.MemAccResolver{}}
	for _, name := range []string{SystemFile, AccountFile} {
		s, err := read(name)
		if err != nil {
			return nil, err
		}
		ac, err := t.decodeAccount(s)
		if err != nil {
			return nil, fmt.Errorf("natsauth: %s: %w", name, err)
		}
		_ = t.resolver.Store(ac.Subject, s)
		if name == SystemFile {
			t.system = ac.Subject
		} else {
			t.account, t.accJWT = ac.Subject, []byte(s)
		}
	}
	if oc.SystemAccount != t.system {
		return nil, fmt.Errorf("natsauth: %s names system account %s, %s is %s", OperatorFile, oc.SystemAccount, SystemFile, t.system)
	}
	return t, nil
}

// decodeAccount decodes an account JWT and checks the operator signed it.
func (t *Trust) decodeAccount(s string) (*jwt.AccountClaims, error) {
	ac, err := jwt.DecodeAccountClaims(s)
	if err != nil {
		return nil, err
	}
	if !t.operator.DidSign(ac) {
		return nil, fmt.Errorf("account %s is not signed by operator %s", ac.Subject, t.operator.Subject)
	}
	return ac, nil
}

// Account is the SLED account's public key: a leaf node binds its remote to
// it (server.RemoteLeafOpts.LocalAccount).
func (t *Trust) Account() string { return t.account }

// Apply turns on operator mode in opts: the operator is trusted, its system
// account is the server's, and accounts resolve from memory.
func (t *Trust) Apply(opts *server.Options) {
	opts.TrustedOperators = []*jwt.OperatorClaims{t.operator}
	opts.SystemAccount = t.system
	opts.AccountResolver = t.resolver
}

// Reload rereads account.jwt and, when it changed, gives the server the new
// claims: revoked credentials are disconnected and refused from then on. It
// reports whether anything changed.
func (t *Trust) Reload(srv *server.Server) (bool, error) {
	data, err := os.ReadFile(filepath.Join(t.dir, AccountFile))
	if err != nil {
		return false, fmt.Errorf("natsauth: %w", err)
	}
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, t.accJWT) {
		return false, nil
	}
	ac, err := t.decodeAccount(string(data))
	if err != nil {
		return false, fmt.Errorf("natsauth: %s: %w", AccountFile, err)
	}
	if ac.Subject != t.account {
		return false, fmt.Errorf("natsauth: %s is now account %s, was %s", AccountFile, ac.Subject, t.account)
	}
	acc, err := srv.LookupAccount(ac.Subject)
	if err != nil {
		return false, fmt.Errorf("natsauth: %w", err)
	}
	_ = t.resolver.Store(ac.Subject, string(data))
	srv.UpdateAccountClaims(acc, ac)
	t.accJWT = data
	return true, nil
}

// Watch reloads the account JWT into the server srv returns every interval
// (default 2s) until ctx ends, so `sled creds revoke` on the authority (or a
// copy of account.jwt pushed to this server's directory) takes effect without
// a restart. srv is asked each time, since a restarted server is a new one; a
// nil server is skipped.
func (t *Trust) Watch(ctx context.Context, srv func() *server.Server, interval time.Duration, log *slog.Logger) {
	if interval <= 0 {
		interval = 2 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			s := srv()
			if s == nil {
				continue
			}
			changed, err := t.Reload(s)
			if err != nil {
				log.Warn("reloading NATS account", "err", err)
			} else if changed {
				log.Info("NATS account reloaded (revocations applied)", "account", t.account)
			}
		}
	}
}

// CredsIdentity reads a .creds file and returns the identity its JWT names:
// the id (for the inbox prefix) and the role and pool from its tags.
func CredsIdentity(path string) (Identity, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Identity{}, fmt.Errorf("natsauth: %w", err)
	}
	s, err := jwt.ParseDecoratedJWT(data)
	if err != nil {
		return Identity{}, fmt.Errorf("natsauth: %s: %w", path, err)
	}
	if _, err := jwt.ParseDecoratedUserNKey(data); err != nil {
		return Identity{}, fmt.Errorf("natsauth: %s: %w", path, err)
	}
	uc, err := jwt.DecodeUserClaims(s)
	if err != nil {
		return Identity{}, fmt.Errorf("natsauth: %s: %w", path, err)
	}
	id := Identity{ID: uc.Name, User: uc.Subject}
	for _, tag := range uc.Tags {
		if v, ok := strings.CutPrefix(tag, "pool:"); ok {
			id.Pool = v
		}
		if v, ok := strings.CutPrefix(tag, "role:"); ok {
			id.Role = Role(v)
		}
	}
	if uc.Expires > 0 {
		id.TTL = time.Until(time.Unix(uc.Expires, 0))
	}
	return id, nil
}

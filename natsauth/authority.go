// Package natsauth is SLED's NATS security: an operator, a system account and
// the SLED account with one scoped signing key per role (see [Role]), the
// credentials (.creds files, usable by any NATS client) it issues to devices
// and services, their revocation, and the trust a server needs to check them.
//
// Why decentralized JWT auth rather than accounts with per-user permissions in
// the server's config: a credential can be issued (and revoked) without
// touching or restarting any server, which a fleet that enrolls devices all the
// time needs; servers hold only public JWTs, so an edge site's leaf node holds
// no secret that could mint a credential; and each role's signing key is
// scoped, so the key that enrolls devices cannot mint a verifier.
//
// On disk an authority is a directory:
//
//	operator.jwt system.jwt account.jwt  public: what servers trust (see LoadTrust)
//	keys/*.nk                            secret seeds (0600): operator, accounts, signing keys
//	issued.json                          every credential issued, by id, for revocation
package natsauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/sled-project/sled/events"
)

// Errors. Every error returned by this package wraps one of these, or an
// os/jwt error for an unreadable or corrupt file.
var (
	// ErrNoAuthority: the directory holds no authority (see Init).
	ErrNoAuthority = errors.New("natsauth: no authority in directory")
	// ErrBadIdentity: an id, pool or role that cannot be issued.
	ErrBadIdentity = errors.New("natsauth: bad identity")
	// ErrUnknownID: Revoke of an id never issued.
	ErrUnknownID = errors.New("natsauth: id was never issued")
)

// AccountName is the name of the SLED account in its JWT.
const AccountName = "SLED"

// File names in an authority directory.
const (
	OperatorFile = "operator.jwt"
	SystemFile   = "system.jwt"
	AccountFile  = "account.jwt"
	issuedFile   = "issued.json"
	keysDir      = "keys"
)

// Authority issues and revokes SLED credentials. Its methods are safe for
// concurrent use within one process; two processes must not issue from the
// same directory at once.
type Authority struct {
	dir string

	mu       sync.Mutex
	operator nkeys.KeyPair
	system   nkeys.KeyPair
	account  nkeys.KeyPair
	signers  map[Role]nkeys.KeyPair
	issued   map[string]Issued
}

// Issued records one identity's credentials.
type Issued struct {
	Role Role   `json:"role"`
	Pool string `json:"pool,omitempty"`
	// Users are the public keys of the id's credentials in force.
	Users []string `json:"users"`
	// Revoked maps the public keys of the id's revoked credentials to when
	// they were revoked.
	Revoked map[string]time.Time `json:"revoked,omitempty"`
}

// Init opens the authority in dir, creating it (keys, JWTs) when dir holds
// none. It is idempotent: a second call opens what the first made.
func Init(dir string) (*Authority, error) {
	a, err := Open(dir)
	if err == nil || !errors.Is(err, ErrNoAuthority) {
		return a, err
	}
	if err := os.MkdirAll(filepath.Join(dir, keysDir), 0o700); err != nil {
		return nil, fmt.Errorf("natsauth: %w", err)
	}
	a = &Authority{dir: dir, signers: map[Role]nkeys.KeyPair{}, issued: map[string]Issued{}}
	mk := func(name string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, error) {
		kp, err := create()
		if err != nil {
			return nil, err
		}
		seed, _ := kp.Seed()
		return kp, writeFile(filepath.Join(dir, keysDir, name+".nk"), seed, 0o600)
	}
	if a.operator, err = mk("operator", nkeys.CreateOperator); err != nil {
		return nil, fmt.Errorf("natsauth: %w", err)
	}
	if a.system, err = mk("system", nkeys.CreateAccount); err != nil {
		return nil, fmt.Errorf("natsauth: %w", err)
	}
	if a.account, err = mk("account", nkeys.CreateAccount); err != nil {
		return nil, fmt.Errorf("natsauth: %w", err)
	}
	for _, r := range Roles {
		if _, scoped := Template(r); !scoped {
			continue
		}
		if a.signers[r], err = mk("signing-"+string(r), nkeys.CreateAccount); err != nil {
			return nil, fmt.Errorf("natsauth: %w", err)
		}
	}
	if err := a.writeJWTs(); err != nil {
		return nil, err
	}
	if err := a.saveIssued(); err != nil {
		return nil, err
	}
	return a, nil
}

// Open loads the authority in dir. It returns an error wrapping
// ErrNoAuthority when dir has none.
func Open(dir string) (*Authority, error) {
	if _, err := os.Stat(filepath.Join(dir, AccountFile)); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w %s", ErrNoAuthority, dir)
	}
	a := &Authority{dir: dir, signers: map[Role]nkeys.KeyPair{}, issued: map[string]Issued{}}
	load := func(name string) (nkeys.KeyPair, error) {
		seed, err := os.ReadFile(filepath.Join(dir, keysDir, name+".nk"))
		if err != nil {
			return nil, fmt.Errorf("natsauth: %w", err)
		}
		kp, err := nkeys.FromSeed(seed)
		if err != nil {
			return nil, fmt.Errorf("natsauth: key %s: %w", name, err)
		}
		return kp, nil
	}
	var err error
	if a.operator, err = load("operator"); err != nil {
		return nil, err
	}
	if a.system, err = load("system"); err != nil {
		return nil, err
	}
	if a.account, err = load("account"); err != nil {
		return nil, err
	}
	for _, r := range Roles {
		if _, scoped := Template(r); scoped {
			if a.signers[r], err = load("signing-" + string(r)); err != nil {
				return nil, err
			}
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, issuedFile))
	if err != nil {
		return nil, fmt.Errorf("natsauth: %w", err)
	}
	if err := json.Unmarshal(data, &a.issued); err != nil {
		return nil, fmt.Errorf("natsauth: %s: %w", issuedFile, err)
	}
	return a, nil
}

// Dir is the authority's directory.
func (a *Authority) Dir() string { return a.dir }

// Identity is who a credential is for.
type Identity struct {
	// ID names the identity: a device id, or a batcher's, verifier's, leaf's
	// or admin's name; an [events.ValidID]. It is the credential's JWT name.
	ID   string
	Role Role
	// Pool the identity serves (default events.DefaultPool). Lower case: NATS
	// keeps JWT tags in lower case, and the role templates expand it.
	Pool string
	// TTL bounds the credential's life (0: it never expires; revoke it).
	TTL time.Duration
	// User is the credential's public user key: set by CredsIdentity, ignored
	// by Issue (which makes a new key).
	User string
}

// InForce reports whether the credential of user key u issued to id is still
// valid here: issued by this authority and not revoked.
func (a *Authority) InForce(id, u string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, k := range a.issued[id].Users {
		if k == u {
			return true
		}
	}
	return false
}

// Issue creates a new user key for id and returns its credentials file (the
// user JWT and seed in the decorated format every NATS client reads). Issuing
// again for the same id makes another, independent credential; Revoke ends
// them all.
func (a *Authority) Issue(id Identity) ([]byte, error) {
	if !events.ValidID(id.ID) {
		return nil, fmt.Errorf("%w: id %q: want 1 to 64 of [A-Za-z0-9_-]", ErrBadIdentity, id.ID)
	}
	if id.Pool == "" {
		id.Pool = events.DefaultPool
	}
	if !events.ValidID(id.Pool) || strings.ToLower(id.Pool) != id.Pool {
		return nil, fmt.Errorf("%w: pool %q: want a lower-case id", ErrBadIdentity, id.Pool)
	}
	if _, err := ParseRole(string(id.Role)); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if prev, ok := a.issued[id.ID]; ok && prev.Role != id.Role {
		return nil, fmt.Errorf("%w: id %q was issued as a %s, not a %s", ErrBadIdentity, id.ID, prev.Role, id.Role)
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("natsauth: %w", err)
	}
	upub, _ := user.PublicKey()
	apub, _ := a.account.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = id.ID
	uc.Tags.Add("pool:"+id.Pool, "role:"+string(id.Role))
	if id.TTL > 0 {
		uc.Expires = time.Now().Add(id.TTL).Unix()
	}
	signer := a.account
	if s, scoped := a.signers[id.Role]; scoped {
		signer = s
		uc.IssuerAccount = apub
		// Scoped users carry no permissions or limits of their own: the
		// signing key's template is all they get.
		uc.UserPermissionLimits = jwt.UserPermissionLimits{}
	}
	ujwt, err := uc.Encode(signer)
	if err != nil {
		return nil, fmt.Errorf("natsauth: sign %s: %w", id.ID, err)
	}
	seed, _ := user.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		return nil, fmt.Errorf("natsauth: %w", err)
	}
	rec := a.issued[id.ID]
	rec.Role, rec.Pool = id.Role, id.Pool
	rec.Users = append(rec.Users, upub)
	a.issued[id.ID] = rec
	if err := a.saveIssued(); err != nil {
		return nil, err
	}
	return creds, nil
}

// IssueFile issues a credential and writes it to path (0600, atomically).
func (a *Authority) IssueFile(id Identity, path string) error {
	creds, err := a.Issue(id)
	if err != nil {
		return err
	}
	return writeFile(path, creds, 0o600)
}

// EnsureFile makes sure path holds a credential for id in force: one already
// there for the same id, role and pool, issued by this authority and not
// revoked, is kept; otherwise a new one is issued to path. It reports whether
// it issued.
func (a *Authority) EnsureFile(id Identity, path string) (bool, error) {
	if id.Pool == "" {
		id.Pool = events.DefaultPool
	}
	if have, err := CredsIdentity(path); err == nil && have.ID == id.ID && have.Role == id.Role && have.Pool == id.Pool && a.InForce(id.ID, have.User) {
		return false, nil
	}
	return true, a.IssueFile(id, path)
}

// Revoke revokes every credential issued to id so far (a credential issued
// later is valid) and rewrites account.jwt. Servers that load trust from the
// directory (LoadTrust, Trust.Watch) disconnect the id's connections and
// refuse it once they reload. It returns an error wrapping ErrUnknownID for an
// id never issued.
func (a *Authority) Revoke(id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	rec, ok := a.issued[id]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownID, id)
	}
	// A revocation is by user key, so a credential issued later (a new key)
	// is not covered.
	if rec.Revoked == nil {
		rec.Revoked = map[string]time.Time{}
	}
	now := time.Now()
	for _, u := range rec.Users {
		rec.Revoked[u] = now
	}
	rec.Users = nil
	a.issued[id] = rec
	if err := a.saveIssued(); err != nil {
		return err
	}
	return a.writeJWTs()
}

// Issued returns the record of every id, sorted by id.
func (a *Authority) Issued() map[string]Issued {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]Issued, len(a.issued))
	for k, v := range a.issued {
		out[k] = v
	}
	return out
}

// writeJWTs signs and writes the operator, system and SLED account JWTs; the
// account's revocations come from the issued records.
func (a *Authority) writeJWTs() error {
	opub, _ := a.operator.PublicKey()
	spub, _ := a.system.PublicKey()
	apub, _ := a.account.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "SLED"
	oc.SystemAccount = spub
	ojwt, err := oc.Encode(a.operator)
	if err != nil {
		return fmt.Errorf("natsauth: operator: %w", err)
	}
	sc := jwt.NewAccountClaims(spub)
	sc.Name = "SYS"
	sjwt, err := sc.Encode(a.operator)
	if err != nil {
		return fmt.Errorf("natsauth: system account: %w", err)
	}
	ac := jwt.NewAccountClaims(apub)
	ac.Name = AccountName
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{
		MemoryStorage: jwt.NoLimit, DiskStorage: jwt.NoLimit, Streams: jwt.NoLimit, Consumer: jwt.NoLimit,
		MaxAckPending: jwt.NoLimit, MemoryMaxStreamBytes: jwt.NoLimit, DiskMaxStreamBytes: jwt.NoLimit,
	}
	roles := make([]Role, 0, len(a.signers))
	for r := range a.signers {
		roles = append(roles, r)
	}
	sort.Slice(roles, func(i, j int) bool { return roles[i] < roles[j] })
	for _, r := range roles {
		spk, _ := a.signers[r].PublicKey()
		scope := jwt.NewUserScope()
		scope.Key = spk
		scope.Role = string(r)
		scope.Description = "SLED " + string(r) + " credentials"
		scope.Template.Permissions, _ = Template(r)
		ac.SigningKeys.AddScopedSigner(scope)
	}
	for _, rec := range a.issued {
		for u, at := range rec.Revoked {
			ac.RevokeAt(u, at)
		}
	}
	ajwt, err := ac.Encode(a.operator)
	if err != nil {
		return fmt.Errorf("natsauth: account: %w", err)
	}
	for name, data := range map[string]string{OperatorFile: ojwt, SystemFile: sjwt, AccountFile: ajwt} {
		if err := writeFile(filepath.Join(a.dir, name), []byte(data), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (a *Authority) saveIssued() error {
	data, err := json.MarshalIndent(a.issued, "", "  ")
	if err != nil {
		return fmt.Errorf("natsauth: %w", err)
	}
	return writeFile(filepath.Join(a.dir, issuedFile), data, 0o600)
}

// writeFile writes data to path atomically (a temporary file renamed), so a
// reader never sees half a file.
func writeFile(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("natsauth: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("natsauth: %w", err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("natsauth: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("natsauth: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("natsauth: %w", err)
	}
	return nil
}

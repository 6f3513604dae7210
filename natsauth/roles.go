package natsauth

import (
	"fmt"

	"github.com/nats-io/jwt/v2"

	"github.com/sled-project/sled/events"
)

// Role is what an identity may do on the SLED subjects. Each role but
// RoleAdmin has its own scoped signing key in the account, whose permission
// template is the role's only grant: a credential's own JWT carries no
// permissions (NATS refuses those for scoped users), so no holder of a role's
// signing key can mint more than that role.
type Role string

// Roles.
const (
	// RoleDevice publishes only its own drafts (sled.draft.<pool>.<id>) and
	// receives only its own results (sled.result.<id>), its pool's verifier
	// heartbeats and replies on its own inbox (_INBOX.<id>.>, which carries
	// JetStream's publish acknowledgements). It has no JetStream API access.
	RoleDevice Role = "device"
	// RoleBatcher consumes SLED_DRAFTS, publishes its pool's batches, and
	// error results for drafts it rejects; it may create streams and
	// consumers but not delete or purge streams.
	RoleBatcher Role = "batcher"
	// RoleVerifier consumes its pool's batches, publishes results and its
	// own heartbeats; JetStream API as RoleBatcher.
	RoleVerifier Role = "verifier"
	// RoleLeaf is the credential a leaf node (an edge site's server) dials
	// the hub with: what the site's devices together may send and receive.
	// Each device is still held to RoleDevice by the leaf server itself.
	RoleLeaf Role = "leaf"
	// RoleAdmin may do anything in the SLED account (provisioning, the nats
	// CLI's stream management). Signed with the account's own key.
	RoleAdmin Role = "admin"
)

// Roles lists every role.
var Roles = []Role{RoleDevice, RoleBatcher, RoleVerifier, RoleLeaf, RoleAdmin}

// ParseRole parses a role name.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("%w: unknown role %q (want device, batcher, verifier, leaf or admin)", ErrBadIdentity, s)
}

// InboxPrefix is the reply-subject prefix of the identity named id: every
// SLED connection made with a credential uses it (nats.CustomInboxPrefix), and
// its permissions let it receive replies there and nowhere else.
func InboxPrefix(id string) string { return "_INBOX." + id }

// jsService is the JetStream API a service role needs: account info, stream
// create/update/info/lookup/message get (provisioning, the expiry watcher) and
// consumers. Stream delete, purge and message delete are left out on purpose:
// only RoleAdmin may destroy data.
var jsService = []string{
	"$JS.API.INFO",
	"$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*", "$JS.API.STREAM.INFO.*",
	"$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST", "$JS.API.STREAM.MSG.GET.*",
	"$JS.API.DIRECT.GET.*", "$JS.API.DIRECT.GET.*.>",
	"$JS.API.CONSUMER.>",
}

// Template returns the permission template of a role's scoped signing key.
// {{name()}} is the credential's id and {{tag(pool)}} its pool; the server
// expands both when the identity connects. RoleAdmin has no template (it is
// unrestricted) and returns ok false.
func Template(r Role) (perms jwt.Permissions, ok bool) {
	const (
		id   = "{{name()}}"
		pool = "{{tag(pool)}}"
	)
	inbox := InboxPrefix(id) + ".>"
	switch r {
	case RoleDevice:
		perms.Pub.Allow = jwt.StringList{events.DraftSubject(pool, id)}
		perms.Sub.Allow = jwt.StringList{events.ResultSubject(id), events.HeartbeatFilter(pool), inbox}
	case RoleBatcher:
		perms.Pub.Allow = append(jwt.StringList{
			events.BatchSubject(pool, ""), events.BatchSubject(pool, "*"),
			events.ResultSubject("*"), events.SubjectDLQ,
			"$JS.ACK.SLED_DRAFTS.>",
		}, jsService...)
		perms.Sub.Allow = jwt.StringList{inbox, events.HeartbeatFilter(pool), "$JS.EVENT.ADVISORY.>"}
	case RoleVerifier:
		perms.Pub.Allow = append(jwt.StringList{
			events.ResultSubject("*"), events.HeartbeatSubject(pool, id), events.SubjectDLQ,
			"$JS.ACK.SLED_BATCHES.>",
		}, jsService...)
		perms.Sub.Allow = jwt.StringList{inbox, "$JS.EVENT.ADVISORY.>"}
	case RoleLeaf:
		// From the hub's side a leaf connection is one client: what it may
		// publish into the hub and what the hub may send it.
		perms.Pub.Allow = jwt.StringList{events.SubjectDrafts}
		perms.Sub.Allow = jwt.StringList{events.SubjectResults, "sled.hb.>", "_INBOX.>"}
	default:
		return perms, false
	}
	return perms, true
}

# Consul ACL policy for katalog-sidecar: least privilege for the token in CONSUL_HTTP_TOKEN_FILE.
#
#   consul acl policy create -name katalog-web -rules @consul-acl-policy.hcl
#   consul acl token create -description "katalog-sidecar web" -policy-name katalog-web
#
# What the sidecar calls, and the permission each needs (checked against a real Consul 1.16.1
# agent with default_policy = "deny", by tests/test_acl.py, which loads this very file):
#
#   PUT /v1/agent/service/register       service:write on the service name
#   PUT /v1/agent/check/update/:check_id service:write on the check's service. Consul's docs
#                                        list node:write,service:write, but node:write is only
#                                        needed for node-level checks; every check of the
#                                        sidecar belongs to a service, and the agent accepts the
#                                        update with service:write alone (HTTP 200).
#   PUT /v1/agent/service/deregister/:id service:write on the service name
#   GET /v1/agent/service/:id            service:read (implied by service:write)
#   GET /v1/agent/checks                 service:read: the agent's node name, read from its own
#                                        copy of the instance's checks
#   GET /v1/catalog/node-services/:node  service:read on the name and node:read on the agent's
#   GET /v1/health/node/:node            node (confirmation is scoped to this node). Without
#                                        node:read the agent answers 200 with an EMPTY answer
#                                        (and the header X-Consul-Results-Filtered-By-ACLs:
#                                        true), never 403: the catalog can then never confirm,
#                                        and the gate says that the catalog hides the service
#                                        from the token.
#
# Nothing else: no agent:read or agent:write (the sidecar never reads /v1/agent/self), no
# node:write, no key/value, no session, no ACL or operator rights.
#
# Adapt it: one `service` block per name in KATALOG_SERVICES (the name before the colon).
# Registering "web:http,admin:9000" needs both blocks below. If your service names share a
# prefix you control, one `service_prefix "shop-" { policy = "write" }` block covers them, but
# also any other name that starts with it; `service_prefix ""` would let the pod register
# itself as any service, which is what this policy is meant to prevent. Prefer one token (and
# policy) per workload.

service "web" {
  policy = "write"
}

# service "admin" {
#   policy = "write"
# }

# Confirmation reads the instance back from the servers' view of the agent's node, which they
# return only if the token may read that node. A pod can be scheduled on any node, hence the empty
# prefix; narrow it if your Consul node names share a prefix for the nodes this workload runs on.
# Read access to nodes shows node names, addresses and node health, nothing writable.
node_prefix "" {
  policy = "read"
}

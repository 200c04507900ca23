"""The Consul side: the agent's HTTP API (api), the servers' view of this node (catalog_view,
blocking), the background readers (watchers: the agent watch, the confirmer), and the
execution of the core's calls against the agent (calls, drain)."""

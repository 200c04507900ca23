"""The Kubernetes side: the API client (client), the pod watch as a readiness source (source, its retry policy watch_retry,
pod_readiness), and the writers the sync loop's observers use (pod_condition, pod_events)."""

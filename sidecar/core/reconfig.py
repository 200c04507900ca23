"""A new configuration (the pod's annotations were edited): what to register again, what to
retire. An invalid edit keeps the last valid registration. Pure."""

from __future__ import annotations

from sidecar.config import Config
from sidecar.core.state import Context
from sidecar.registration import build_instances, registration_payload


def config_invalid(ctx: Context, problem: str | None) -> None:
    s = ctx.state
    if s.draining:
        return
    if problem and problem != s.config_problem:
        kept = "keeping the registration as it was" if s.instances else "nothing registered"
        ctx.error(f"config error in the pod's annotations ({kept}): {problem}")
    elif not problem and s.config_problem:
        ctx.info("the pod's annotations are valid again")
    s.config_problem = problem


def apply_config(ctx: Context, config: Config) -> None:
    """Instances whose registration differs are registered again (status re-pushed, confirmed
    again), services no longer configured are deregistered."""
    s = ctx.state
    if s.draining:
        return
    previous, ctx.config = ctx.config, config
    s.config_problem = None
    obs = s.observation
    if obs is None or not s.instances:
        s.instances, s.port_problem = (), None  # built from the new config by the next round
        ctx.info(f"services from the {config.service_source}: {', '.join(x.name for x in config.services)}")
        return
    try:
        instances = build_instances(config, obs.pod_uid, obs.container_ports)
    except ValueError as exc:
        ctx.config, s.config_problem = previous, str(exc)
        ctx.error(f"config error in the pod's annotations (keeping the registration as it was): {exc}")
        return
    before = {i.service_id: i for i in s.instances}
    for inst in instances:
        old = before.pop(inst.service_id, None)
        if old is None or registration_payload(old, previous) != registration_payload(inst, config):
            s.registered.discard(inst.service_id)
    s.retired.extend(before.values())
    s.instances = instances
    ctx.info(f"configuration changed (services from {config.service_source}): "
             + ", ".join(f"{i.name} {i.address}:{i.port}" for i in instances))

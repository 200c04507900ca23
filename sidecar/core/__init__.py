"""The sync core: a pure state machine (sans-I/O), in the manner of h11's `_state.py`.

It takes events (an observation of the pod, a config edit, the answer or failure of an agent
call it asked for, what the agent watch saw, a confirmation result, SIGTERM, a timer) and
returns actions (a call to make with its timeout, a confirmation to start, a status to write,
a log line, an Event). It owns no thread, socket, clock or sleep: `now` is passed in with
every event, so a simulator can drive it with a virtual clock.

- sidecar.core.events: what goes in.
- sidecar.core.actions: what comes out.
- sidecar.core.phases: the phases and the table of allowed transitions.
- sidecar.core.machine: `Core.handle(event, now) -> list[Action]`, `Core.next_deadline()`: the
  dispatch and the one task at a time (a round, the adoption refresh, the drain).
- sidecar.core.inputs, reconfig: events that change what is wanted; sync, adopt, faults: the
  rounds and what failed calls and the agent watch mean; terminate, drain: the drain;
  failopen: KATALOG_FAIL_OPEN_AFTER; stall: a process that did not run (SIGSTOP) re-reads
  before it writes; report: the gate's verdict and the status file; state: what the core knows.
"""

"""Configuration that follows the pod: re-load it whenever the pod's annotations change.

Sits between the pod watch and the sync loop. Every observation carries the pod's
`katalog-sidecar.io/` and `katalog-sync.wish.com/` annotations; when they (or the pod's first
containerPort) differ from the last ones seen, the configuration is built again by
`load_config(environment, annotations)` (the one place a Config is built) and handed to the
sync loop *before* the observation that carried the edit, so the loop never applies an
observation under a stale configuration. Unchanged annotations cost nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from sidecar import annotations as pod_annotations
from sidecar.config import Config, load_config
from sidecar.errors import ConfigError
from sidecar.readiness import Observation, ReadinessSink

log = logging.getLogger("katalog.config")


class ConfigSink(ReadinessSink, Protocol):
    def reconfigure(self, config: Config) -> None: ...

    def config_problem(self, problems: list[str] | None) -> None: ...


class ConfigFollower:
    """A ReadinessSink that re-loads the configuration on annotation edits, then forwards."""

    def __init__(self, environ: Mapping[str, str], config: Config, sink: ConfigSink) -> None:
        self._environ = dict(environ)  # the environment is fixed for the process's life
        self._config = config
        self._sink = sink
        self._seen: tuple[object, ...] | None = None
        self._said: set[str] = set()  # notices are logged once per process, not per edit
        self.reloads = 0  # configurations built (for tests: unrelated edits must not count)

    def observe(self, observation: Observation) -> None:
        key = (observation.annotations, observation.first_port)
        if observation.annotations is not None and key != self._seen:
            self._seen = key
            if self._config.service_source == "environment":
                # KATALOG_SERVICES is fixed for the process's life: the annotations never apply.
                annotations = dict(observation.annotations)
                if pod_annotations.has_services(annotations):
                    self._say("KATALOG_SERVICES is set: the pod's katalog-sidecar.io/ and katalog-sync.wish.com/ "
                              "annotations are ignored")
                if pod_annotations.FAIL_OPEN_AFTER in annotations or self._config.fail_open_after is not None:
                    # The per-workload fail-open choice applies whatever names the services.
                    self._reload(annotations, observation.first_port)
            else:
                self._reload(dict(observation.annotations), observation.first_port)
        self._sink.observe(observation)

    def _say(self, notice: str) -> None:
        if notice not in self._said:
            self._said.add(notice)
            log.info("%s", notice)

    def problem(self, message: str | None) -> None:
        self._sink.problem(message)

    def _reload(self, annotations: dict[str, str], first_port: int | None) -> None:
        self.reloads += 1
        try:
            config = load_config(self._environ, annotations, default_port=first_port)
        except ConfigError as error:
            self._sink.config_problem(error.problems)
            return
        for notice in config.notices:
            self._say(notice)
        if config != self._config:
            self._config = config
            self._sink.reconfigure(config)
        self._sink.config_problem(None)

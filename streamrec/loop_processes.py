"""The processes that make up the loop on one machine, and where each exposes metrics.

``streamrec up`` supervises these; the demo and load tests scrape their metrics. One
process per stage: the feature flow, the online learner, the drift monitor, serving.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamrec.process_supervisor import ProcessSpec, streamrec_command
from streamrec.settings import Settings

STAGES = ("flow", "learner", "drift", "serving")


def loop_specs(settings: Settings, stages: tuple[str, ...] = STAGES) -> list[ProcessSpec]:
    """Process specs for ``stages`` (all by default), configured by the environment."""
    commands = {
        "flow": streamrec_command("flow"),
        "learner": streamrec_command("learn"),
        "drift": streamrec_command("drift"),
        "serving": streamrec_command("serve"),
    }
    unknown = set(stages) - set(commands)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")
    return [ProcessSpec(stage, commands[stage]) for stage in stages]


@dataclass(frozen=True, slots=True)
class MetricsEndpoints:
    """The Prometheus endpoints of the loop's processes (None when a port is 0 = off)."""

    flow: str | None
    learner: str | None
    drift: str | None
    serving: str

    @classmethod
    def from_settings(cls, settings: Settings, host: str = "127.0.0.1") -> MetricsEndpoints:
        def url(port: int) -> str | None:
            return f"http://{host}:{port}/metrics" if port else None

        serving = settings.serving
        return cls(
            flow=url(settings.flow.metrics_port),
            learner=url(settings.learner.metrics_port),
            drift=url(settings.drift.metrics_port),
            serving=f"http://{serving.host}:{serving.port}/metrics",
        )

    def as_dict(self) -> dict[str, str | None]:
        return {
            "flow": self.flow,
            "learner": self.learner,
            "drift": self.drift,
            "serving": self.serving,
        }

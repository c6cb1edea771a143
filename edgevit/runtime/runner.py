"""What the runtime runs: a backend's runner, and the record a backend loads an artifact by. The backends
(:mod:`edgevit.backends`) make runners; everything that times or runs one (predict, time, the demo, the build's
latency stage) sees only this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from edgevit.runtime.manifest import Manifest
    from edgevit.targets import Target


class Runner(Protocol):
    info: dict  # what actually executes (device, precisions, threads...)

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class LoadSpec:
    """What a backend loads an artifact by: its precision, its target and what the backend recorded when it built
    it (threads, host precision, compile config, engine, plan: a manifest's ``backend`` section). Made once from
    a build's record or a bundle's manifest."""

    precision: str
    target: Target
    details: dict = field(default_factory=dict)

    @classmethod
    def of_manifest(cls, m: Manifest) -> LoadSpec:
        return cls(m.precision, m.target, m.backend.details)

    def with_details(self, **more) -> LoadSpec:
        return LoadSpec(self.precision, self.target, {**self.details, **more})

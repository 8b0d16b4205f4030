"""EnginePool: the engine processes of every model scorer, and this front end's connections to them.

Engines are started in one place. `EngineProcesses` supervises one engine per device for every
configured scorer whose model runs in an engine (`ENGINE_MODELS`); with one front-end process the
pool starts them itself, with `reward-service --workers N` the parent process does and the workers'
pools attach to the sockets it put in `settings.engine_addresses`. Scorers get their
`EngineGroup` from the pool: the connections to their engines, and the choice of engine per request.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable

import anyio
import zmq.asyncio

from reward_service.engine.client import EngineClient
from reward_service.engine.protocol import EngineConfig, EngineStatus, ModelCard
from reward_service.engine.supervisor import EngineSupervisor
from reward_service.errors import NotReady
from reward_service.metrics import ServiceMetrics
from reward_service.settings import ServiceSettings

# Scorers whose model runs in engine processes, and the setting that names each one's model.
ENGINE_MODELS: dict[str, Callable[[ServiceSettings], str]] = {
    "roberta-hate": lambda settings: settings.roberta_model,
}

# How often a scorer waiting for its model's card looks at its engines' statuses (seconds).
CARD_POLL_S = 0.05


def engine_scorers(settings: ServiceSettings) -> list[str]:
    """The configured scorers that need engine processes."""
    return [name for name in settings.scorers if name in ENGINE_MODELS]


def engine_configs(name: str, settings: ServiceSettings) -> list[EngineConfig]:
    """One engine per device of REWARD_DEVICES (the supervisor gives each its socket address)."""
    return [
        EngineConfig(
            scorer=name,
            address="",
            model_path=ENGINE_MODELS[name](settings),
            device=device,
            dtype=settings.dtype,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_items=settings.max_batch_items,
            max_batch_padding_tokens=settings.max_batch_padding_tokens,
            max_wait_ms=settings.max_wait_ms,
            queue_capacity=settings.queue_capacity,
            log_level=settings.log_level,
            log_format=settings.log_format,
        )
        for device in settings.engine_devices
    ]


class EngineProcesses:
    """The supervised engine processes of every model scorer in `settings`, their figures written
    under `metrics_dir` (a directory of their own unless given)."""

    def __init__(self, settings: ServiceSettings, metrics_dir: str | None = None) -> None:
        self._own_metrics_dir = metrics_dir is None
        self.metrics_dir = metrics_dir or tempfile.mkdtemp(prefix="reward-metrics-")
        self.supervisors = {
            name: EngineSupervisor(
                name,
                engine_configs(name, settings),
                self.metrics_dir,
                heartbeat_interval_s=settings.engine_heartbeat_interval_s,
                heartbeat_timeout_s=settings.engine_heartbeat_timeout_s,
                stall_timeout_s=settings.engine_stall_timeout_s,
                start_timeout_s=settings.engine_start_timeout_s,
                standby=settings.engine_standby,
            )
            for name in engine_scorers(settings)
        }

    @property
    def addresses(self) -> dict[str, list[str]]:
        return {name: supervisor.addresses for name, supervisor in self.supervisors.items()}

    def start(self) -> None:
        for supervisor in self.supervisors.values():
            supervisor.start()

    def stop(self, timeout_s: float) -> None:
        """Stop every engine (each finishes its queued work first, for up to `timeout_s`)."""
        for supervisor in self.supervisors.values():
            supervisor.stop(timeout_s)
        if self._own_metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


class EngineGroup:
    """One scorer's engines as this front end sees them."""

    def __init__(self, scorer: str, clients: list[EngineClient], retry_after_s: int) -> None:
        self.scorer = scorer
        self.clients = clients
        self._retry_after_s = retry_after_s

    @property
    def ready(self) -> bool:
        return any(client.ready for client in self.clients)

    @property
    def statuses(self) -> list[EngineStatus]:
        return [client.status for client in self.clients if client.status is not None]

    @property
    def failed(self) -> bool:
        """Every engine has reported that it could not load its model."""
        statuses = self.statuses
        return len(statuses) == len(self.clients) > 0 and all(s.state == "failed" for s in statuses)

    def first_error(self) -> str | None:
        return next((s.error for s in self.statuses if s.state == "failed" and s.error), None)

    async def model_card(self) -> ModelCard | None:
        """The card of the model, from the first engine to load it; None once every engine failed
        (or if there is none)."""
        while self.clients and not self.failed:
            card = next((s.card for s in self.statuses if s.card is not None), None)
            if card is not None:
                return card
            await asyncio.sleep(CARD_POLL_S)
        return None

    def pick(self, not_ready_detail: Callable[[], str]) -> EngineClient:
        """The ready engine with the fewest items outstanding from this front end.

        If none has reported ready to this process yet, a connected one still gets the request: the
        engine knows best (it answers 503 itself while loading), and a front-end worker that started
        a moment after its siblings does not refuse work that its engine can already do.
        """
        ready = [client for client in self.clients if client.ready]
        ready = ready or [client for client in self.clients if client.connected]
        if not ready:
            raise NotReady(f"scorer '{self.scorer}' is not ready: {not_ready_detail()}", self._retry_after_s)
        return min(ready, key=lambda client: client.outstanding_items)


class EnginePool:
    """This front end's engines: started here (`settings.engine_addresses` empty) or attached to."""

    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.processes: EngineProcesses | None = None
        self._context: zmq.asyncio.Context | None = None
        self._groups: dict[str, EngineGroup] = {}

    def group(self, scorer: str) -> EngineGroup:
        """The engines of `scorer` (connected by `start`; empty before)."""
        if scorer not in self._groups:
            self._groups[scorer] = EngineGroup(scorer, [], self._settings.retry_after_s)
        return self._groups[scorer]

    def supervisor(self, scorer: str) -> EngineSupervisor | None:
        """The supervisor of `scorer`'s engines, if this process started them."""
        return None if self.processes is None else self.processes.supervisors.get(scorer)

    async def start(self) -> None:
        names = engine_scorers(self._settings)
        if not names:
            return
        addresses = self._settings.engine_addresses
        if not addresses:
            self.processes = EngineProcesses(self._settings)
            self.processes.start()
            self._metrics.add_engine_metrics(self.processes.metrics_dir)
            addresses = self.processes.addresses
        self._context = zmq.asyncio.Context()
        for name in names:
            group = self.group(name)
            group.clients = [
                EngineClient(address, self._context, self._settings.retry_after_s)
                for address in addresses.get(name, [])
            ]
            for client in group.clients:
                await client.start()

    async def close(self) -> None:
        for group in self._groups.values():
            for client in group.clients:
                await client.close()
            group.clients = []
        if self.processes is not None:
            await anyio.to_thread.run_sync(self.processes.stop, self._settings.graceful_shutdown_s)
            self.processes = None
        if self._context is not None:
            self._context.term()
            self._context = None

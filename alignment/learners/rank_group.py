"""The processes of a launched run, for work done between training runs (iterative rounds): rank 0 decides and
writes, every rank receives what every rank computed.

Objects travel over torch.distributed (pickled): the default process group when it is gloo (CPU), else a gloo
group made for them, so no GPU memory is touched. The default group is started as the recipe's trainer will
start it (`alignment.learners.trainer_args.init_process_group`), and stays up for the whole process: each
training run reuses it. In one process (no launcher) every call is local.
"""

from __future__ import annotations

from typing import Any, TypeVar

from alignment.errors import ConfigError, DataError, UserInputError
from alignment.io import StorageError
from alignment.learners.trainer_args import end_process_group, init_process_group, world_info
from alignment.recipes.recipe import Recipe
from rewards.errors import RewardComponentError, RewardConfigError
from rollout.base import RolloutServerError

# Errors that travel between ranks as themselves (the one-line errors the command line reports); any other
# exception reaches the other ranks as a RuntimeError naming the rank, its type and its message.
PORTABLE_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DataError,
    StorageError,
    UserInputError,
    RewardComponentError,
    RewardConfigError,
    RolloutServerError,
)

T = TypeVar("T")


class RankGroup:
    """rank / world of this process, and object collectives over every process of the run."""

    def __init__(self, recipe: Recipe) -> None:
        self.rank, self.world = world_info()
        self._group: Any = None
        if self.world > 1:
            import torch.distributed as dist

            init_process_group(recipe)
            self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: T) -> T:
        """Rank 0's `value`, on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value, group=self._group)
        return gathered

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self._group)

    def close(self) -> None:
        """End the run's process group on every rank together (`trainer_args.end_process_group`); for scripts that
        use a RankGroup outside `align` (the command line ends it itself)."""
        if self._group is not None:
            import torch.distributed as dist

            dist.destroy_process_group(self._group)
            self._group = None
        end_process_group()

    def run_everywhere(self, work: Any, *args: Any, **kwargs: Any) -> list[Any]:
        """`work(*args, **kwargs)` on every rank; every rank's result, in rank order.

        When it raises on any rank, every rank raises: the failing rank its own exception, the others that
        exception too (or a RuntimeError naming the rank when it cannot be pickled), so no rank is left waiting in
        a collective while another has stopped.
        """
        try:
            outcome: tuple[bool, Any] = (True, work(*args, **kwargs))
        except Exception as err:  # noqa: BLE001 - handed to every rank, re-raised below
            if self.world == 1:
                raise
            outcome = (False, (type(err).__name__, str(err), self.rank))
            own = err
        else:
            own = None
        outcomes = self.all_gather(outcome)
        for ok, payload in outcomes:
            if not ok:
                if own is not None:
                    raise own
                raise _rebuilt_error(*payload)
        return [payload for _, payload in outcomes]


def _rebuilt_error(name: str, message: str, rank: int) -> Exception:
    """Another rank's exception from its type name and message: the same one-line error type when it is one of
    PORTABLE_ERRORS, else a RuntimeError naming the rank."""
    for cls in PORTABLE_ERRORS:
        if cls.__name__ == name:
            return cls(message)
    return RuntimeError(f"rank {rank}: {name}: {message}")

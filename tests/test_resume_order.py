"""A run resumed in the middle of an epoch draws that epoch's prompt order, under several processes too.

transformers skips the trained batches of the resumed epoch with accelerate's `skip_first_batches`; under
several processes the seeded sampler then sits one level deeper than accelerate's `set_epoch` looks, so it kept
its first epoch's order (found by the 2-process ZeRO-2 kill/resume test when the kill fell mid-epoch).
"""

from __future__ import annotations

import pytest
import torch
from accelerate.data_loader import prepare_data_loader, skip_first_batches

from alignment.learners.checkpointing import set_sampler_epoch
from alignment.learners.grpo import EpochSeededRepeatSampler


def _loader(num_processes: int, process_index: int) -> torch.utils.data.DataLoader:
    """A GRPO-shaped loader: 8 prompts, 2 per step per process, each repeated for 2 generations."""
    data = list(range(8))
    sampler = EpochSeededRepeatSampler(data, mini_repeat_count=2, batch_size=2 * num_processes, seed=11)
    loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=sampler)
    return prepare_data_loader(loader, num_processes=num_processes, process_index=process_index, put_on_device=False)


@pytest.mark.parametrize("num_processes", [1, 2])
@pytest.mark.parametrize("epoch", [1, 3])
def test_a_resumed_epoch_sees_the_uninterrupted_order(num_processes: int, epoch: int) -> None:
    for rank in range(num_processes):
        uninterrupted = _loader(num_processes, rank)
        uninterrupted.set_epoch(epoch)
        set_sampler_epoch(uninterrupted, epoch)
        expected = [b.tolist() for b in uninterrupted][1:]

        resumed = skip_first_batches(_loader(num_processes, rank), 1)  # what transformers builds on resume
        assert set_sampler_epoch(resumed, epoch) >= 1, "the seeded sampler was not reached"
        resumed.set_epoch(epoch)
        assert [b.tolist() for b in resumed] == expected
    other = _loader(num_processes, 0)
    set_sampler_epoch(other, epoch + 1)
    assert [b.tolist() for b in other][1:] != expected, "another epoch draws another order (the check can fail)"

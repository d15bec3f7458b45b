"""When the memory janitor gives free heap memory back (server/allocator.py's TrimPolicy)."""

from __future__ import annotations

from layerserve.server.allocator import TrimPolicy

MIB = 1 << 20


def test_an_idle_worker_gives_back_what_a_load_freed_after_a_trim_under_that_load() -> None:
    """The case the grid's memory row caught once (1.26x idle 15 s after the load): a trim under load
    could not get below 250 MiB, and the idle mark used to rise with it, so the idle worker at 180 MiB
    was never trimmed."""
    policy = TrimPolicy(base=100 * MIB, budget=64 * MIB)
    assert policy.should_trim(300 * MIB, idle=False)
    policy.trimmed(250 * MIB, idle=False)
    assert policy.should_trim(180 * MIB, idle=True)


def test_under_load_a_trim_that_got_nothing_back_is_not_repeated_every_period() -> None:
    policy = TrimPolicy(base=100 * MIB, budget=64 * MIB)
    assert not policy.should_trim(164 * MIB, idle=False)  # within the budget
    assert policy.should_trim(300 * MIB, idle=False)
    policy.trimmed(290 * MIB, idle=False)  # the load holds it
    assert not policy.should_trim(300 * MIB, idle=False)
    assert policy.should_trim(355 * MIB, idle=False)


def test_while_idle_it_trims_after_any_growth_past_a_few_mib_and_not_again_for_nothing() -> None:
    policy = TrimPolicy(base=100 * MIB, budget=64 * MIB)
    assert not policy.should_trim(103 * MIB, idle=True)
    assert policy.should_trim(120 * MIB, idle=True)  # a fifth over start-up used to be kept
    policy.trimmed(110 * MIB, idle=True)  # what could not be given back
    assert not policy.should_trim(113 * MIB, idle=True)
    assert policy.should_trim(115 * MIB, idle=True)
    assert not policy.should_trim(120 * MIB, idle=False)  # under load, the budget rules


def test_after_an_idle_trim_the_next_load_is_measured_from_the_start_up_size_again() -> None:
    policy = TrimPolicy(base=100 * MIB, budget=64 * MIB)
    policy.trimmed(400 * MIB, idle=False)
    policy.trimmed(110 * MIB, idle=True)
    assert policy.should_trim(180 * MIB, idle=False)  # not 464: the last load's mark is gone

"""The steady rate of a forward/search run (returnn_ray.inference.progress.Progress): from the
first result, and from the moment every actor has given one (the actors start at different paces)."""

import io

from returnn_ray.inference.progress import Progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress(actors: int, clock: Clock) -> Progress:
    return Progress("forward", total=1000, verbosity=0, out=io.StringIO(), actors=actors, clock=clock)


def test_the_steady_rate_starts_when_the_last_actor_gives_its_first_result():
    clock = Clock()
    p = progress(2, clock)
    clock.now = 110.0
    p.advance(40, actor="a")  # actor a is up
    clock.now = 111.0
    p.advance(40, actor="a")
    clock.now = 114.0
    p.advance(30, actor="b")  # the last one is up: all run from here
    assert p.rates() == (70 / 4.0, None)  # nothing after b's first result yet
    clock.now = 116.0
    p.advance(40, actor="a")
    clock.now = 118.0
    p.advance(40, actor="b")
    first, all_up = p.rates()
    assert first == (40 + 30 + 40 + 40) / 8.0  # after a's first result, b's start-up in it
    assert all_up == (40 + 40) / 4.0


def test_results_of_one_task_arriving_together_count_as_the_first():
    clock = Clock()
    p = progress(1, clock)
    clock.now = 110.0
    p.advance(10, actor="a")
    clock.now = 110.01  # the same Ray Data task's next batch
    p.advance(10, actor="a")
    clock.now = 112.0
    p.advance(10, actor="a")
    assert p.rates() == (10 / 2.0, 10 / 2.0)  # one actor: both rates are the same


def test_a_restarted_actor_does_not_move_the_start_of_the_steady_rate():
    clock = Clock()
    p = progress(2, clock)
    for now, actor in ((110.0, "a"), (112.0, "b"), (113.0, "a"), (114.0, "c"), (116.0, "b")):
        clock.now = now
        p.advance(10, actor=actor)
    assert p.rates()[1] == 30 / 4.0  # from b's first result; c (a replacement) changes nothing


def test_no_rate_before_a_second_result_or_when_an_actor_never_gave_one():
    clock = Clock()
    p = progress(2, clock)
    assert p.rates() == (None, None)
    clock.now = 110.0
    p.advance(10, actor="a")
    clock.now = 112.0
    p.advance(10, actor="a")
    assert p.rates() == (10 / 2.0, None)  # b never ran: no rate with both

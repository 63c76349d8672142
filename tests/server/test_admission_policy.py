"""The admission policy on its own: which place a newcomer gets when a cap is full."""

from __future__ import annotations

from credproxy.server.admission import SlotView, choose_victim, oldest_of_largest

NOW = 100.0


def _slot(pid: int, *, progress: float, serving: bool = False, unfinished: bool = True) -> SlotView:
    return SlotView(
        pid=pid,
        serving=serving,
        last_progress=progress,
        stall_after_s=1.0 if unfinished else 30.0,
        unfinished=unfinished,
    )


def _choose(slots: list[SlotView], newcomer: int = 99, capacity: int = 8) -> SlotView | None:
    return choose_victim(slots, lambda s: s, newcomer_pid=newcomer, capacity=capacity, now=NOW)


def test_a_connection_being_served_is_never_chosen_however_long_it_waits() -> None:
    assert _choose([_slot(1, progress=0.0, serving=True)] * 8) is None


def test_the_peer_with_the_most_stalled_places_loses_before_an_older_one() -> None:
    older = _slot(1, progress=10.0)
    larger = [_slot(2, progress=50.0), _slot(2, progress=60.0)]
    assert _choose([older, *larger]) is larger[0]


def test_an_unfinished_frame_goes_before_an_idle_connection_of_the_same_peer() -> None:
    idle = _slot(1, progress=0.0, unfinished=False)
    partial = _slot(1, progress=90.0)
    assert _choose([idle, partial]) is partial


def test_a_recently_active_connection_is_not_stalled() -> None:
    assert _choose([_slot(1, progress=NOW - 0.5)], capacity=1) is None


def test_with_nobody_stalled_a_peer_over_its_share_gives_up_its_longest_idle_place() -> None:
    hog = [_slot(1, progress=NOW - 5.0 + i, unfinished=False) for i in range(6)]
    other = [_slot(2, progress=NOW - 9.0, unfinished=False) for _ in range(2)]
    assert _choose([*hog, *other]) is hog[0]


def test_with_nobody_stalled_peers_holding_one_place_each_keep_them() -> None:
    slots = [_slot(pid, progress=NOW - 5.0, unfinished=False) for pid in range(8)]
    assert _choose(slots) is None


def test_a_new_peer_takes_a_place_from_one_holding_more_than_one() -> None:
    slots = [_slot(pid, progress=NOW - 5.0, unfinished=False) for pid in (1, 1, 2, 2, 3, 3, 4, 4)]
    chosen = _choose(slots)
    assert chosen is not None


def test_a_newcomer_of_the_largest_peer_takes_nothing_from_others() -> None:
    hog = [_slot(1, progress=NOW - 5.0, unfinished=False) for _ in range(6)]
    other = [_slot(2, progress=NOW - 5.0, unfinished=False) for _ in range(2)]
    assert _choose([*hog, *other], newcomer=1) is None


def test_before_the_handshake_the_oldest_of_the_peer_with_most_waiting_is_closed() -> None:
    lone = _slot(1, progress=1.0)
    many = [_slot(2, progress=5.0), _slot(2, progress=6.0)]
    assert oldest_of_largest([lone, *many], lambda s: s, now=NOW) is many[0]

import pytest

from llmserve.model_worker.textstream import StopMatcher

pytestmark = pytest.mark.unit


def feed_all(matcher: StopMatcher, deltas: list[str]) -> str:
    return "".join(matcher.feed(d) for d in deltas) + matcher.flush()


def test_no_stops_passes_text_through():
    m = StopMatcher([])
    assert m.feed("Hello") == "Hello"
    assert m.feed(" world") == " world"
    assert not m.matched


def test_stop_inside_one_delta_cuts_before_it():
    m = StopMatcher(["\n\n"])
    assert feed_all(m, ["Paris.\n\nNext"]) == "Paris."
    assert m.matched


def test_stop_split_across_deltas_is_found_and_held_back():
    m = StopMatcher(["STOP"])
    out = [m.feed(d) for d in ["abc S", "T", "O", "P tail"]]
    # "S", "T", "O" could start the stop sequence: none of them may reach the client.
    assert out == ["abc ", "", "", ""]
    assert m.matched
    assert m.flush() == ""


def test_held_back_prefix_is_released_when_it_turns_out_not_to_be_a_stop():
    m = StopMatcher(["STOP"])
    assert m.feed("abc ST") == "abc "
    assert m.feed("ART") == "START"
    assert not m.matched


def test_flush_releases_held_back_text_at_the_end():
    m = StopMatcher(["END"])
    assert m.feed("the E") == "the "
    assert m.flush() == "E"


def test_earliest_of_several_stops_wins():
    m = StopMatcher(["world", "lo"])
    assert feed_all(m, ["hello world"]) == "hel"

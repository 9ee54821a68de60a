"""Joined recordings, the second training stage's data: lengths within the range drawn, every
sentence in as many recordings as asked, pauses of the stated lengths, audio as planned."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from validation.corpus import (
    JOINED_SECONDS,
    LONG_PAUSE_SECONDS,
    QUIETER_DB,
    SHORT_PAUSE_SECONDS,
    Joined,
    plan_joined,
    render_joined,
)


@settings(max_examples=50, deadline=None)
@given(durations=st.lists(st.floats(0.5, 6.0), min_size=1, max_size=60), seed=st.integers(0, 2**16),
       copies=st.integers(1, 3))
def test_plans_cover_every_sentence_copies_times_within_the_length_range(durations, seed, copies):
    plans = plan_joined(durations, seed, copies=copies)
    used = [p for plan in plans for p in plan.parts]
    assert sorted(used) == sorted(list(range(len(durations))) * copies)
    for plan in plans:
        assert len(plan.pauses) == len(plan.parts) - 1 == len(plan.gains_db) - 1
        assert all(SHORT_PAUSE_SECONDS[0] <= p <= LONG_PAUSE_SECONDS[1] for p in plan.pauses)
        assert all(QUIETER_DB[0] <= g <= QUIETER_DB[1] for g in plan.gains_db)
        length = plan.lead + sum(durations[p] for p in plan.parts) + sum(plan.pauses)
        # several sentences only while they fit the draw; one sentence stands alone whatever its length
        assert len(plan.parts) == 1 or length <= JOINED_SECONDS[1]


def test_plans_join_several_sentences_and_leave_some_alone():
    plans = plan_joined([3.0] * 400, seed=0)
    counts = [len(p.parts) for p in plans]
    assert min(counts) == 1 and max(counts) >= 4


def test_rendered_recording_is_the_parts_at_their_gains_with_noise_filled_pauses():
    rate = 1000
    parts = [np.full(300, 0.5, np.float32), np.full(200, -0.25, np.float32)]
    parts[1][:100] = np.random.default_rng(0).standard_normal(100).astype(np.float32) * 0.01  # its room noise
    plan = Joined(parts=(0, 1), pauses=(0.5,), lead=0.25, gains_db=(0.0, -6.0))
    audio = render_joined(plan, parts, rate, seed=1)
    assert audio.size == 250 + 300 + 500 + 200 and audio.dtype == np.float32
    lead_floor = float(np.std(parts[0][:100]))  # a constant part: silent room, silent lead
    assert np.all(np.abs(audio[:250]) <= lead_floor + 1e-7)
    np.testing.assert_array_equal(audio[250:550], parts[0])
    pause = audio[550:1050]
    room = float(np.std(parts[1][:100])) * 10 ** (-6 / 20)  # the next part's room noise at its gain, not zeros
    assert 0.8 * room < np.std(pause) < 1.25 * room
    np.testing.assert_allclose(audio[1050:], parts[1] * 10 ** (-6 / 20), rtol=1e-6)

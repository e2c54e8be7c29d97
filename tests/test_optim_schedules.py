"""Tests for vistas.optim.schedules: durations in any unit and schedule multipliers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vistas.errors import ConfigError
from vistas.optim.schedules import make_schedule, parse_duration


def _dur(value, **kw):
    kw = {"steps_per_epoch": None, "batch_size": None, "total_steps": None, **kw}
    return parse_duration(value, name="train.warmup", **kw)


# ---- durations -------------------------------------------------------------------------


def test_steps():
    assert _dur(1000) == 1000
    assert _dur(np.int64(7)) == 7
    assert _dur("1000") == 1000
    assert _dur(" 250 ") == 250
    assert _dur(1e4) == 10_000
    assert _dur(0) == 0


def test_epochs_examples_percent():
    assert _dur("3ep", steps_per_epoch=100) == 300
    assert _dur("2.5ep", steps_per_epoch=234.375) == 586  # 585.9375
    assert _dur("50000ex", batch_size=512) == 98  # 97.66
    assert _dur("10%", total_steps=1234) == 123  # 123.4
    assert _dur("100%", total_steps=50) == 50


def test_rounding_half_up():
    assert _dur("0.5ep", steps_per_epoch=5) == 3  # 2.5 -> 3, not banker's 2
    assert _dur("3ex", batch_size=2) == 2  # 1.5 -> 2
    assert _dur("0.4ep", steps_per_epoch=1) == 0


def test_missing_context_errors():
    with pytest.raises(ConfigError, match="train.warmup='3ep'.*steps per epoch"):
        _dur("3ep")
    with pytest.raises(ConfigError, match="batch size"):
        _dur("100ex")
    with pytest.raises(ConfigError, match="training length"):
        _dur("10%")


@pytest.mark.parametrize("value", ["abc", "3 epochs", "-5", -5, "10%%", "", True, None, [3], "ep"])
def test_bad_durations(value):
    with pytest.raises(ConfigError, match=r"train\.warmup=") as info:
        _dur(value, steps_per_epoch=10, batch_size=10, total_steps=100)
    assert "\n" not in str(info.value)


def test_bad_duration_message_lists_units():
    with pytest.raises(ConfigError) as info:
        _dur("abc")
    assert str(info.value) == (
        "train.warmup='abc' is not a duration; use steps (1000), epochs ('3ep'), "
        "examples ('50000ex') or percent of training ('10%')"
    )


def test_percent_over_100():
    with pytest.raises(ConfigError, match="150%"):
        _dur("150%", total_steps=100)


# ---- schedules -------------------------------------------------------------------------


def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_warmup_ramps_linearly_from_first_step():
    sched = make_schedule(total_steps=100, warmup_steps=10, decay="constant")
    np.testing.assert_allclose(
        _values(sched, range(12)), [(s + 1) / 10 for s in range(10)] + [1, 1], rtol=1e-6
    )
    assert float(sched(0)) > 0


def test_rsqrt_value():
    sched = make_schedule(total_steps=100_000, warmup_steps=1000, decay="rsqrt", timescale=10_000)
    assert float(sched(1000)) == pytest.approx(1.0)
    assert float(sched(1000 + 30_000)) == pytest.approx(0.5)  # 1/sqrt(1 + 3)
    assert float(sched(1000 + 10_000)) == pytest.approx(1 / math.sqrt(2))


def test_cosine_endpoints_and_midpoint():
    sched = make_schedule(total_steps=110, warmup_steps=10, decay="cosine", min_value=0.1)
    assert float(sched(10)) == pytest.approx(1.0)
    assert float(sched(60)) == pytest.approx(0.55)
    assert float(sched(110)) == pytest.approx(0.1)
    assert float(sched(10_000)) == pytest.approx(0.1)
    plain = make_schedule(total_steps=100, decay="cosine")
    assert float(plain(0)) == pytest.approx(1.0)
    assert float(plain(100)) == pytest.approx(0.0, abs=1e-7)


def test_linear_decay():
    sched = make_schedule(total_steps=100, decay="linear")
    np.testing.assert_allclose(_values(sched, [0, 25, 50, 100]), [1.0, 0.75, 0.5, 0.0], atol=1e-6)


def test_cooldown_reaches_zero_at_the_end():
    sched = make_schedule(
        total_steps=1000, warmup_steps=100, decay="rsqrt", timescale=100, cooldown_steps=200
    )
    before = float(sched(799))
    assert before == pytest.approx(1 / math.sqrt(1 + 699 / 100))
    assert float(sched(900)) == pytest.approx(1 / math.sqrt(1 + 800 / 100) * 0.5)  # (1000-900)/200
    assert float(sched(999)) == pytest.approx(1 / math.sqrt(1 + 899 / 100) / 200)  # ~0, not wasted
    assert float(sched(1000)) == 0.0
    values = _values(sched, range(790, 1000))
    assert np.all(np.diff(values) <= 0)


def test_jittable_with_traced_steps():
    sched = make_schedule(total_steps=100, warmup_steps=10, decay="cosine", cooldown_steps=10)
    steps = jnp.arange(100)
    jitted = jax.jit(jax.vmap(sched))(steps)
    assert jitted.dtype == jnp.float32
    np.testing.assert_allclose(jitted, _values(sched, range(100)), rtol=1e-5, atol=1e-7)
    assert float(jnp.max(jitted)) <= 1.0
    assert float(jnp.min(jitted)) >= 0.0


def test_schedule_errors():
    with pytest.raises(ConfigError, match="'exp'.*rsqrt, cosine, linear, constant"):
        make_schedule(total_steps=10, decay="exp")
    with pytest.raises(ConfigError, match="exceeds total_steps=10"):
        make_schedule(total_steps=10, warmup_steps=6, cooldown_steps=5)
    with pytest.raises(ConfigError, match="total_steps"):
        make_schedule(total_steps=0)
    with pytest.raises(ConfigError, match="min_value"):
        make_schedule(total_steps=10, min_value=1.5)

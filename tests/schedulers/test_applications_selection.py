"""The selection layer in a simulated environment (pure Python, fixed seeds): simulated models
answer a 10-class task right with a set probability and otherwise with a random wrong class,
each error independent of the others'."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from backends.common.errors import AlreadyExists, InvalidArgument
from schedulers.applications.application import LATE_STREAK, PROBE_EVERY, Application, Lateness, fan_out_deadline_s
from schedulers.applications.definition import MAX_MODELS, AppDefinition, LinkedModel
from schedulers.applications.selection import POLICIES, summary

# Stated bounds: after 300 feedbacks with A right 90 % of the time, B 70 %, C 50 %, A drops to
# 20 %; B's weight passes A's within this many feedbacks (measured over 15 seeds: Exp4 8-25, Exp3 16-64).
SHIFT_WITHIN = {"exp4": 30, "exp3": 80}


class Environment:
    def __init__(self, accuracy: dict[str, float], seed: int, classes: int = 10) -> None:
        self.accuracy = dict(accuracy)
        self.rng = np.random.default_rng(seed)
        self.classes = classes
        self.truth = 0
        self.answers: dict[str, int] = {}

    def query(self, i: int) -> np.ndarray:
        self.truth = int(self.rng.integers(self.classes))
        for model, p in self.accuracy.items():
            wrong = (self.truth + 1 + int(self.rng.integers(self.classes - 1))) % self.classes
            self.answers[model] = self.truth if self.rng.random() < p else wrong
        return np.array([i], dtype=np.float32)

    async def resolve(self, model: str, version: str, x: np.ndarray) -> np.ndarray:
        return np.array([self.answers[model]], dtype=np.float32)

    def label(self) -> np.ndarray:
        return np.array([self.truth], dtype=np.float32)


def make_app(policy: str, models: list[str], seed: int = 7, threshold: float = 0.0) -> Application:
    definition = AppDefinition("sim", [LinkedModel(m) for m in models], policy, -1, 1_000_000, threshold, seed)
    return Application(definition)


async def step(app: Application, env: Environment, i: int, uid: str = "0") -> bool:
    x = env.query(i)
    answer = await app.predict(x, uid, env.resolve)
    await app.update(x, env.label(), uid, env.resolve)
    return answer.output is not None and int(answer.output[0]) == env.truth


async def feedbacks_until_shift(policy: str, seed: int) -> int:
    env = Environment({"a": 0.9, "b": 0.7, "c": 0.5}, seed)
    app = make_app(policy, ["a", "b", "c"], seed)
    for i in range(300):
        await step(app, env, i)
    weights = summary(app.state("0"))
    assert weights["a"] == max(weights.values()), weights
    env.accuracy["a"] = 0.2
    for j in range(1, 201):
        await step(app, env, 300 + j)
        weights = summary(app.state("0"))
        if weights["b"] > weights["a"]:
            return j
    return 10_000


@pytest.mark.parametrize("policy", ["exp3", "exp4"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_weight_moves_to_the_better_model_when_the_best_degrades(policy: str, seed: int) -> None:
    assert await feedbacks_until_shift(policy, seed) <= SHIFT_WITHIN[policy]


@pytest.mark.parametrize("classes", [2, 10])
async def test_ensemble_beats_its_best_member_when_errors_are_independent(classes: int) -> None:
    accuracy = {"a": 0.75, "b": 0.7, "c": 0.65}
    for policy in ("exp4", "vote"):
        env = Environment(accuracy, seed=3, classes=classes)
        app = make_app(policy, list(accuracy))
        right, member = 0, dict.fromkeys(accuracy, 0)
        for i in range(2000):
            right += await step(app, env, i)
            for m in accuracy:
                member[m] += env.answers[m] == env.truth
        assert right > max(member.values()), (policy, right, member)


async def test_exp3_asks_one_model_and_repeats_with_the_same_seed() -> None:
    def picks(seed: int) -> list[str]:
        app = make_app("exp3", ["a", "b", "c"], seed)
        state = app.state("0")
        return [POLICIES["exp3"].select(state, np.zeros(1))[0] for _ in range(50)]

    assert picks(5) == picks(5)
    assert picks(5) != picks(6)
    assert len(set(picks(5))) == 3  # it explores


async def test_state_is_per_user_and_json_serialisable() -> None:
    import json

    env = Environment({"a": 0.9, "b": 0.3}, seed=1)
    app = make_app("exp4", ["a", "b"])
    for i in range(40):
        await step(app, env, i, uid="alice")
    assert summary(app.state("alice"))["a"] > 0.8
    assert summary(app.state("bob")) == {"a": 0.5, "b": 0.5}  # bob gave no feedback
    restored = Application(app.definition, json.loads(json.dumps(app.states)))
    assert summary(restored.state("alice")) == summary(app.state("alice"))


async def test_vote_confidence_and_threshold_default() -> None:
    answers = {"a": 1.0, "b": 1.0, "c": 2.0}

    async def resolve(model: str, version: str, x: np.ndarray) -> np.ndarray:
        return np.array([answers[model]], dtype=np.float32)

    app = make_app("vote", list(answers), threshold=0.5)
    answer = await app.predict(np.zeros(1, np.float32), "0", resolve)
    assert answer.output is not None
    assert (answer.default, float(answer.output[0]), round(answer.confidence, 2)) == (False, 1.0, 0.67)
    app.definition.confidence_threshold = 0.9
    answer = await app.predict(np.zeros(1, np.float32), "0", resolve)
    assert answer.default
    assert answer.explanation == "confidence 0.67 below threshold 0.9"
    assert app.metrics.defaults["low_confidence"] == 1


async def test_average_combines_scores() -> None:
    scores = {"a": [0.9, 0.1], "b": [0.2, 0.8], "c": [0.7, 0.3]}

    async def resolve(model: str, version: str, x: np.ndarray) -> np.ndarray:
        return np.array(scores[model], dtype=np.float32)

    answer = await make_app("average", list(scores)).predict(np.zeros(1), "0", resolve)
    assert answer.output is not None
    np.testing.assert_allclose(answer.output, [0.6, 0.4], rtol=1e-6)
    assert round(answer.confidence, 2) == 0.67  # b's class differs from the average's


async def test_deadline_combines_what_arrived_and_counts_stragglers() -> None:
    release = asyncio.Event()

    async def resolve(model: str, version: str, x: np.ndarray) -> np.ndarray:
        if model == "slow":
            await release.wait()  # never set: this member misses every deadline
        return np.array([3.0], dtype=np.float32)

    app = make_app("vote", ["fast1", "fast2", "slow"])
    app.definition.slo_micros = 20_000
    answer = await app.predict(np.zeros(1), "0", resolve)
    assert (answer.default, answer.answered) == (False, ["fast1", "fast2"])
    assert round(answer.confidence, 2) == 0.67  # the straggler does not count as agreeing
    assert app.metrics.stragglers == 1

    only_slow = make_app("single", ["slow"])
    only_slow.definition.slo_micros = 5_000
    answer = await only_slow.predict(np.zeros(1), "0", resolve)
    assert answer.default
    assert answer.explanation == "no model answered within the slo (5000 µs)"
    assert only_slow.metrics.defaults["timeout"] == 1


def test_the_fan_out_deadline_keeps_a_reserve_and_moves_up_by_the_recent_lateness() -> None:
    assert fan_out_deadline_s(15_000) == pytest.approx(0.012)  # 20 % of the slo kept back
    assert fan_out_deadline_s(100_000) == pytest.approx(0.095)  # at most 5 ms
    assert fan_out_deadline_s(15_000, 0.002) == pytest.approx(0.010)  # answers ran 2 ms late lately
    assert fan_out_deadline_s(15_000, 1.0) == pytest.approx(0.0075)  # never less than half the slo


def test_lateness_is_the_99th_percentile_of_the_recent_window() -> None:
    lateness = Lateness(window=160)
    for ms in range(160):
        lateness.add(ms / 1000)
    assert lateness.p99_s == pytest.approx(0.157)  # (taken every 16 answers)
    for _ in range(160):  # the window moves on: old lateness is forgotten
        lateness.add(0.001)
    assert lateness.p99_s == pytest.approx(0.001)
    lateness.add(-0.5)  # early is not negative lateness
    assert lateness.p99_s >= 0


async def test_an_application_that_waits_for_its_deadline_learns_how_late_it_answers() -> None:
    never = asyncio.Event()

    async def resolve(model: str, version: str, x: np.ndarray) -> np.ndarray:
        if model == "slow":
            await never.wait()
        return np.array([1.0], dtype=np.float32)

    app = make_app("average", ["fast", "slow"])
    app.definition.slo_micros = 10_000
    for _ in range(3):
        await app.predict(np.zeros(1), "0", resolve)
    assert app.lateness.p99_s > 0  # the timer fires after the deadline, never before


async def test_a_member_late_at_every_recent_deadline_is_not_waited_for_except_by_probes() -> None:
    slow_answers = asyncio.Event()

    async def resolve(model: str, version: str, x: np.ndarray) -> np.ndarray:
        if model == "slow":
            await slow_answers.wait()
        return np.array([0.5], dtype=np.float32)

    app = make_app("average", ["fast", "slow"])
    app.definition.slo_micros = 20_000
    for _ in range(LATE_STREAK):  # each waits for the deadline: the slow member misses it
        answer = await app.predict(np.zeros(1), "0", resolve)
    assert app.late_streak["slow"] == LATE_STREAK
    assert app.late_streak["fast"] == 0
    app.definition.slo_micros = 3_600_000_000  # an hour: waiting for this deadline would hang
    answer = await asyncio.wait_for(app.predict(np.zeros(1), "0", resolve), 5)
    assert answer.answered == ["fast"]
    assert app.metrics.stragglers == LATE_STREAK + 1
    app.definition.slo_micros = 20_000
    app.metrics.predictions = PROBE_EVERY  # a probe waits for the slow member as before
    slow_answers.set()  # and it is on time now
    answer = await asyncio.wait_for(app.predict(np.zeros(1), "0", resolve), 5)
    assert answer.answered == ["fast", "slow"]
    assert app.late_streak["slow"] == 0  # waited for again from now on


async def test_a_bad_input_for_every_member_is_the_clients_error() -> None:
    async def resolve(model: str, version: str, x: np.ndarray) -> np.ndarray:
        raise InvalidArgument("wrong shape")

    with pytest.raises(InvalidArgument, match="wrong shape"):
        await make_app("vote", ["a", "b"]).predict(np.zeros(1), "0", resolve)


def test_definition_checks() -> None:
    good = {"name": "app1", "models": [{"name": "m", "version": 2}], "policy": "exp4", "default_output": 0,
            "slo_micros": 1000}  # fmt: skip
    assert AppDefinition.from_json(good).models[0].version == "2"
    for change, message in (
        ({"policy": "nope"}, "'policy'"),
        ({"policy": {}}, "'policy'"),
        ({"slo_micros": -5}, "slo_micros"),
        ({"slo_micros": 1.5}, "slo_micros"),
        ({"name": "bad name"}, "'name'"),
        ({"name": "v2"}, "reserved"),
        ({"confidence_threshold": 2}, "confidence_threshold"),
        ({"models": [{"name": "m"}, {"name": "m"}]}, "twice"),
        ({"models": [{"name": "m", "version": 0}]}, "version"),
        ({"default_output": None}, "default_output"),
        ({"seed": -1}, "seed"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            AppDefinition.from_json({**good, **change})


def test_linking_keeps_the_definitions_limits() -> None:
    full = AppDefinition.from_json(
        {
            "name": "full",
            "models": [{"name": f"m{i}"} for i in range(MAX_MODELS)],
            "policy": "vote",
            "default_output": 0,
            "slo_micros": 1000,
        }
    )
    with pytest.raises(InvalidArgument, match=f"already links {MAX_MODELS} models"):
        full.with_model(LinkedModel("one_more", ""))
    one = AppDefinition.from_json(
        {"name": "one", "models": [{"name": "m"}], "policy": "vote", "default_output": 0, "slo_micros": 1000}
    )
    with pytest.raises(AlreadyExists, match="already linked"):
        one.with_model(LinkedModel("m", "2"))
    assert [m.name for m in one.with_model(LinkedModel("n", "")).models] == ["m", "n"]
    assert [m.name for m in one.models] == ["m"]  # a new definition; this one is unchanged


async def test_answers_before_the_deadline_once_the_stragglers_cannot_change_it() -> None:
    answers = {"a": 1.0, "b": 1.0, "c": 2.0, "never": 3.0}
    never = asyncio.Event()  # never set

    async def resolve(model: str, version: str, x: np.ndarray) -> np.ndarray:
        if model == "never":
            await never.wait()
        return np.array([answers[model]], dtype=np.float32)

    decided = make_app("vote", ["a", "b", "never"])
    decided.definition.slo_micros = 60_000_000  # a minute: only an early answer passes wait_for
    answer = await asyncio.wait_for(decided.predict(np.zeros(1), "0", resolve), 5)
    assert (answer.default, answer.answered, decided.metrics.early, decided.metrics.stragglers) == (
        False, ["a", "b"], 1, 1,
    )  # fmt: skip

    for members, policy, threshold in (
        (["a", "c", "never"], "vote", 0.0),  # 1 against 1: the straggler would break the tie
        (["a", "b", "never"], "vote", 0.9),  # decided, but 2/3 is below the threshold unless it agrees
        (["a", "b", "never"], "average", 0.0),  # every member moves the mean
    ):
        app = make_app(policy, members, threshold=threshold)
        app.definition.slo_micros = 30_000
        await app.predict(np.zeros(1), "0", resolve)
        assert (app.metrics.early, app.metrics.stragglers) == (0, 1), (members, policy, threshold)

"""An application (Clipper's selection layer at run time): fan a query out to the models its
policy selects, wait no longer than the latency objective, combine what arrived, and fall back
to the default output when nothing usable did. Feedback updates the policy state of the user
(context) it names. Models run through a resolver the server passes in, so this module knows
nothing of how or where they run."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from backends.common.errors import ClipperdError, InvalidArgument
from schedulers.applications.definition import AppDefinition
from schedulers.applications.selection import Feedback, State, policy, with_models
from schedulers.stats import LATENCY_BUCKETS_NS, ModelStats, latency_bucket

# runs one model (name, version "" for the latest) on one input; returns its output
Resolver = Callable[[str, str, np.ndarray], Awaitable[np.ndarray]]

DEFAULT_UID = "0"
MAX_USERS = 10_000  # policy states per application; past it, new users share the default one
RECENT_QUERIES = 4096  # inputs whose member answers are kept for feedback
FEEDBACK_TIMEOUT_S = 10.0  # re-asking the models for feedback on an input no longer remembered
# Of the slo, the fan-out waits all but this reserve (20 %, at most 5 ms), kept for combining,
# encoding and sending, so that the answer leaves within the slo; plus what the application has
# lately seen answers run past the fan-out deadline (the event loop's timer granularity, a loop
# busy with other requests), never more than half the slo.
RESERVE_SHARE, RESERVE_MAX_S = 0.2, 0.005
LATENESS_WINDOW = 256  # recent deadline-bound predictions the lateness percentile is taken over
# A member that missed the deadline in this many predictions in a row is not waited for: the
# answer goes once the others are in (it would have gone without it at the deadline anyway).
# Every PROBE_EVERY-th prediction waits for it as usual, so that a member that is fast again
# is waited for again from its first answer in time.
LATE_STREAK, PROBE_EVERY = 8, 128  # probes under 1 % of predictions stay out of the p99


def fan_out_deadline_s(slo_micros: int, lateness_s: float = 0.0) -> float:
    slo_s = slo_micros / 1e6
    return slo_s - min(slo_s / 2, min(RESERVE_MAX_S, RESERVE_SHARE * slo_s) + lateness_s)


class Lateness:
    """How far past its fan-out deadline an answer was ready, over the recent predictions that
    waited for the deadline: the 99th percentile, which the next deadlines are moved up by."""

    def __init__(self, window: int = LATENESS_WINDOW) -> None:
        self._recent: deque[float] = deque(maxlen=window)
        self._added = 0
        self.p99_s = 0.0

    def add(self, late_s: float) -> None:
        self._recent.append(max(late_s, 0.0))
        self._added += 1
        if self._added % 16 == 0 or len(self._recent) < 16:  # a sort per 16 answers, not per answer
            ordered = sorted(self._recent)
            self.p99_s = ordered[int(0.99 * (len(ordered) - 1))]


@dataclass
class Answer:
    output: np.ndarray | None  # None: the default output answers
    default: bool
    explanation: str
    confidence: float
    answered: list[str]


DEFAULT_REASONS = ("timeout", "low_confidence", "failed")  # why a default output was answered


@dataclass
class AppMetrics:
    predictions: int = 0
    defaults: Counter[str] = field(default_factory=Counter)  # by reason: timeout, low_confidence, failed
    stragglers: int = 0  # selected members not heard from when the application answered
    early: int = 0  # answers given before every member answered: the rest could not change them
    feedback: int = 0
    compared: int = 0  # predictions with two or more member answers (disagreement monitoring)
    disagreed: int = 0  # of those, the ones whose members answered different classes
    latency_ns: int = 0  # summed over predictions
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_NS) + 1))

    def record(self, elapsed_ns: int) -> None:
        self.predictions += 1
        self.latency_ns += elapsed_ns
        self.latency_buckets[latency_bucket(elapsed_ns)] += 1

    def to_json(self) -> dict[str, object]:
        return {
            "predictions": self.predictions,
            "defaults": dict(self.defaults),
            "stragglers": self.stragglers,
            "early_answers": self.early,
            "feedback": self.feedback,
            "member_disagreement_rate": self.disagreed / self.compared if self.compared else 0.0,
            "mean_latency_micros": self.latency_ns / self.predictions / 1000 if self.predictions else 0.0,
        }


def _retrieve(task: asyncio.Future[np.ndarray]) -> None:
    if not task.cancelled():
        task.exception()  # a straggler's late failure is expected: keep asyncio from logging it


def _user_seed(seed: int, uid: str) -> int:
    return seed if uid == DEFAULT_UID else (seed * 1_000_003 + zlib.crc32(uid.encode())) & 0xFFFFFFFF


class Application:
    def __init__(self, definition: AppDefinition, states: dict[str, State] | None = None) -> None:
        self.definition = definition
        self.states: dict[str, State] = dict(states or {})
        self.metrics = AppMetrics()
        self.lateness = Lateness()
        self.late_streak: Counter[str] = Counter()  # per member: deadlines missed in a row
        self.stats = ModelStats()  # its KServe face's statistics, as a model's
        self._recent: OrderedDict[tuple[str, bytes], tuple[dict[str, np.ndarray], tuple[str, ...]]] = OrderedDict()

    @property
    def name(self) -> str:
        return self.definition.name

    def model_names(self) -> list[str]:
        return [m.name for m in self.definition.models]

    def state_key(self, uid: str) -> str:
        """Whose policy state ``uid`` uses: its own, or the shared default once MAX_USERS users
        have one of their own."""
        return uid if uid in self.states or len(self.states) < MAX_USERS else DEFAULT_UID

    def state(self, uid: str) -> State:
        """The policy state of ``uid`` (created on first use), fitted to the linked models."""
        d = self.definition
        uid = self.state_key(uid)
        state = self.states.get(uid)
        names = self.model_names()
        if state is None or state.get("models") != names or state.get("policy") != d.policy:
            learnt = state if state is not None and state.get("policy") == d.policy else {}
            state = with_models(d.policy, learnt, names, _user_seed(d.seed, uid))
            state["policy"] = d.policy
            self.states[uid] = state
        return state

    def redefine(self, definition: AppDefinition) -> None:
        """A new definition (linked models, policy, pins...); learnt state carries over where the
        policy stays the same."""
        if definition.policy != self.definition.policy:
            self.states = {}
        self.definition = definition
        self._recent.clear()

    # -- predict --------------------------------------------------------------------------

    async def predict(self, x: np.ndarray, uid: str, resolver: Resolver) -> Answer:
        start = time.perf_counter_ns()
        try:
            return await self._predict(x, uid, resolver)
        finally:
            self.metrics.record(time.perf_counter_ns() - start)

    async def _predict(self, x: np.ndarray, uid: str, resolver: Resolver) -> Answer:
        d = self.definition
        state = self.state(uid)
        pol = policy(d.policy)
        chosen = pol.select(state, x)
        if not chosen:
            return self._default("failed", "the application has no linked model")

        judged: list[tuple[int, np.ndarray, float]] = []  # the last judgement: (answers, y, confidence)

        def judge(predictions: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
            """The combined answer and its confidence (members that did not answer do not agree).
            Answers only ever arrive, so a judgement of as many answers is of the same ones."""
            if not judged or judged[0][0] != len(predictions):
                y, agreeing = pol.combine(state, x, predictions)
                judged[:] = [(len(predictions), y, agreeing * len(predictions) / len(chosen))]
            return judged[0][1], judged[0][2]

        def decided(predictions: dict[str, np.ndarray], waiting: list[str]) -> bool:
            """The answer cannot change any more and its confidence already meets the threshold
            (the waiting members counted as disagreeing)."""
            return pol.decided(state, predictions, waiting) and judge(predictions)[1] >= d.confidence_threshold

        started = time.perf_counter()  # not loop.time(): uvloop's is in ms, cached per iteration
        deadline_s = fan_out_deadline_s(d.slo_micros, self.lateness.p99_s)
        hopeless = self._hopeless(chosen)
        predictions, pending, errors = await self._fan_out(chosen, x, resolver, deadline_s, decided, hopeless)
        waited = time.perf_counter() - started
        at_deadline = bool(pending) and waited >= deadline_s
        if at_deadline:  # it waited for the deadline: how late was it ready?
            self.lateness.add(waited - deadline_s)
        self._count_late(chosen, pending, at_deadline)
        late = len(pending)
        self.metrics.stragglers += late
        self._remember(uid, x, predictions, tuple(chosen))
        self._compare(predictions)
        if not predictions:
            if errors and all(isinstance(e, InvalidArgument) for e in errors):
                raise errors[0]  # the input is wrong for the models: the client's error, not a default
            if late:
                return self._default("timeout", f"no model answered within the slo ({d.slo_micros} µs)")
            return self._default("failed", f"every selected model failed: {_first_message(errors)}")
        y, confidence = judge(predictions)
        if confidence < d.confidence_threshold:
            return self._default(
                "low_confidence", f"confidence {confidence:.2f} below threshold {d.confidence_threshold:g}", confidence
            )
        return Answer(y, False, "", confidence, sorted(predictions))

    async def _fan_out(
        self,
        chosen: list[str],
        x: np.ndarray,
        resolver: Resolver,
        timeout_s: float,
        decided: Callable[[dict[str, np.ndarray], list[str]], bool] | None = None,
        hopeless: frozenset[str] = frozenset(),
    ) -> tuple[dict[str, np.ndarray], list[str], list[BaseException]]:
        """Asks ``chosen``; returns at the deadline, when all answered, as soon as ``decided``
        says the rest cannot change the answer, or when only ``hopeless`` members (chronically
        late) are left and one answer is in. The members not heard from are cancelled and
        returned by name."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        versions = {m.name: m.version for m in self.definition.models}
        tasks: dict[asyncio.Future[np.ndarray], str] = {
            asyncio.ensure_future(resolver(m, versions.get(m, ""), x)): m for m in chosen
        }
        pending: set[asyncio.Future[np.ndarray]] = set(tasks)
        predictions: dict[str, np.ndarray] = {}
        errors: list[BaseException] = []
        while pending and (remaining := deadline - loop.time()) > 0:
            done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is None:
                    predictions[tasks[task]] = task.result()
                else:
                    errors.append(error)
            waiting = [tasks[t] for t in pending]
            if (
                pending
                and predictions
                and ((decided is not None and decided(predictions, waiting)) or hopeless.issuperset(waiting))
            ):
                self.metrics.early += 1
                break
        for task in pending:
            task.add_done_callback(_retrieve)
            task.cancel()  # a late answer is worse than none: free its queue slot
        return predictions, [tasks[t] for t in pending], errors

    def _hopeless(self, chosen: list[str]) -> frozenset[str]:
        """The chosen members not to wait for: late at every one of their last LATE_STREAK
        deadlines (none on a probing prediction)."""
        if self.metrics.predictions % PROBE_EVERY == 0:
            return frozenset()
        return frozenset(m for m in chosen if self.late_streak[m] >= LATE_STREAK)

    def _count_late(self, chosen: list[str], pending: list[str], at_deadline: bool) -> None:
        """A member heard from is on time again; one still pending at the deadline missed it
        (one not waited for, or cut short by an early answer, says nothing)."""
        for member in chosen:
            if member not in pending:
                self.late_streak[member] = 0
            elif at_deadline:
                self.late_streak[member] += 1

    def _compare(self, predictions: dict[str, np.ndarray]) -> None:
        """Member disagreement, a drift signal that needs no label: do the members that answered
        agree on the class?"""
        if len(predictions) > 1:
            self.metrics.compared += 1
            self.metrics.disagreed += disagree(predictions.values())

    def _default(self, reason: str, explanation: str, confidence: float = 0.0) -> Answer:
        self.metrics.defaults[reason] += 1
        return Answer(None, True, explanation, confidence, [])

    def _remember(self, uid: str, x: np.ndarray, predictions: dict[str, np.ndarray], chosen: tuple[str, ...]) -> None:
        key = (uid, x.tobytes())
        self._recent[key] = (predictions, chosen)
        self._recent.move_to_end(key)
        while len(self._recent) > RECENT_QUERIES:
            self._recent.popitem(last=False)

    # -- feedback -------------------------------------------------------------------------

    async def update(
        self,
        x: np.ndarray,
        label: np.ndarray,
        uid: str,
        resolver: Resolver,
        joined: Callable[[dict[str, np.ndarray]], None] | None = None,
    ) -> State:
        """Learns from the true label of ``x`` for ``uid``; returns the new state (to persist).
        The members' answers come from the prediction of ``x`` when it is remembered, else the
        models are asked again (Clipper did the same). ``joined`` is shown those answers (the
        server joins the label to them for its members' accuracy from feedback)."""
        state = self.state(uid)
        remembered = self._recent.get((uid, x.tobytes()))
        if remembered is None:
            chosen = tuple(policy(self.definition.policy).select(state, x))
            predictions, _, errors = await self._fan_out(list(chosen), x, resolver, FEEDBACK_TIMEOUT_S)
            if not predictions and errors:
                raise errors[0] if isinstance(errors[0], ClipperdError) else InvalidArgument(_first_message(errors))
        else:
            predictions, chosen = remembered
        if joined is not None:
            joined(predictions)
        new_state = policy(self.definition.policy).observe(state, x, Feedback(label, predictions, chosen))
        self.states[self.state_key(uid)] = new_state
        self.metrics.feedback += 1
        return new_state


def disagree(answers: Iterable[np.ndarray]) -> bool:
    """Whether members answered different classes: the argmax of each answer, or the value
    itself for a one-element answer."""
    classes = {int(np.argmax(a)) if a.size > 1 else a.reshape(-1)[0].item() for a in answers}
    return len(classes) > 1


def _first_message(errors: list[BaseException]) -> str:
    if not errors:
        return "no answer"
    error = errors[0]
    return error.message if isinstance(error, ClipperdError) else type(error).__name__

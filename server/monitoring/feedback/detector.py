"""The change detector of a version's error stream, river's Page-Hinkley or ADWIN: the alarm
rises when the error goes up and falls when it comes back down.

Page-Hinkley watches one direction per detector, so two run: an increase raises the alarm (and
restarts the decrease watcher at the new level), a decrease lowers it (and restarts the
increase watcher). ADWIN cuts its window at any change; the direction is that of its estimate.
river is imported on first use: only servers with a feedback model pay its import time."""

from __future__ import annotations

from typing import Any

from server.monitoring.feedback.config import FeedbackConfig


class ChangeDetector:
    def __init__(self, config: FeedbackConfig) -> None:
        self.config = config
        self.alarm = False
        self.changes = 0  # alarm changes, either way
        self.seen = 0  # error values fed
        self.changed_at = 0  # ``seen`` at the latest alarm change
        self._up: Any = None
        self._down: Any = None
        self._adwin: Any = None
        if config.detector == "adwin":
            from river.drift import ADWIN

            self._adwin = ADWIN(delta=config.adwin_delta)
        else:
            self._up, self._down = self._page_hinkley("up"), self._page_hinkley("down")

    def _page_hinkley(self, mode: str) -> Any:
        from river.drift import PageHinkley

        c = self.config
        return PageHinkley(min_instances=c.ph_min_instances, delta=c.ph_delta, threshold=c.ph_threshold, mode=mode)

    def update(self, error: float) -> bool | None:
        """Feeds one error value; the new alarm state when it changed, else None."""
        self.seen += 1
        rising = self._adwin_step(error) if self._adwin is not None else self._page_hinkley_step(error)
        if rising is None or rising == self.alarm:
            return None
        self.alarm = rising
        self.changes += 1
        self.changed_at = self.seen
        return rising

    def _adwin_step(self, error: float) -> bool | None:
        before = self._adwin.estimation
        self._adwin.update(error)
        if not self._adwin.drift_detected:
            return None
        return bool(self._adwin.estimation > before)

    def _page_hinkley_step(self, error: float) -> bool | None:
        self._up.update(error)
        self._down.update(error)
        if self._up.drift_detected:
            self._down = self._page_hinkley("down")
            return True
        if self._down.drift_detected:
            self._up = self._page_hinkley("up")
            return False
        return None

    @property
    def name(self) -> str:
        return self.config.detector

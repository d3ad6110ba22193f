"""Judging on a judge that takes requests while it writes answers (`Judge.continuous()`): each batch is handed to
its decoder as soon as it is ready, so the rows of one batch never run alone while the next is waiting, and each batch
is stored, in one transaction, once all its answers have ended.

A batch's `batch_seconds` is the decoder time charged to its requests (each forward pass's time split over its
rows), so over a run they add up to the decoder's busy time, as the wall times of one-call-per-batch judges do."""

from __future__ import annotations

from typing import Callable, Sequence

from PIL import Image

from ..judge import JudgeOutput
from . import Audit, JudgeBatch, Stage


class ContinuousJudging:
    def __init__(self, audit: Audit, decoder, stage: Stage, on_stored: Callable[[int], None] | None = None):
        self.audit = audit
        self.decoder = decoder
        self.stage = stage
        self.on_stored = on_stored
        self.open: list[tuple[JudgeBatch, list[int]]] = []  # handed to the decoder, not yet stored
        self.ended: set[int] = set()

    @classmethod
    def open_for(cls, audit: Audit, stage: Stage,
                 on_stored: Callable[[int], None] | None = None) -> "ContinuousJudging | None":
        """On the audit's judge (opened here), or None where its judge answers each call's batch whole."""
        decoder = audit.judge_model().continuous()
        return None if decoder is None else cls(audit, decoder, stage, on_stored)

    @property
    def busy(self) -> bool:
        return self.decoder.busy

    @property
    def waiting(self) -> int:
        """Requests handed over that no row has taken up yet."""
        return self.decoder.waiting_count

    def submit(self, saliency_ids: Sequence[str], views: dict[str, Image.Image]) -> None:
        if not saliency_ids:
            return
        self.stage.model_loaded = True
        batch = self.audit.judge_requests(list(saliency_ids), self.stage, views)
        # the maps it shows no judge here are done with, for the progress: unreadable images, and maps another run
        # is judging or has judged (its lease; counted in the stage)
        left_out = len(saliency_ids) - (0 if batch is None else len(batch.maps))
        if left_out and self.on_stored is not None:
            self.on_stored(left_out)
        if batch is not None:
            self.open.append((batch, self.decoder.submit(batch.requests)))

    def step(self) -> None:
        """One decoding step; the batches whose answers have all ended are stored. When the decoder crashes, its
        batches are stored: the answers that had ended as they are, the others as failures (retried on the next run);
        a new decoder takes the batches that follow, unless the decoder crashed --judge-failure-limit times in a row
        (no batch answered in between): then the run stops."""
        try:
            self.ended.update(self.decoder.step())
        except Exception as error:
            crashed, failed, self.open, self.ended = self.decoder, self.open, [], set()
            reason = f"{type(error).__name__}: {error}"
            for batch, indices in failed:  # stored first: nothing that follows may lose them
                # answers that had ended before the crash are kept; the others are failures, retried next run
                taken = [self._kept(crashed, i, reason) for i in indices]
                self._store(self.audit.judgment_rows(batch, [output for output, _ in taken],
                                                     sum(seconds for _, seconds in taken)))
            stop = self.audit.judge_failed(reason)
            if stop is not None:
                raise self.audit.stopped(stop, self.stage) from error
            self.decoder = self.audit.judge_model().continuous()
            return
        still = []
        for batch, indices in self.open:
            if not all(i in self.ended for i in indices):
                still.append((batch, indices))
                continue
            taken = [self.decoder.take(i) for i in indices]
            self.ended.difference_update(indices)
            self.audit.judge_failed(None)  # a batch answered: the failures in a row start again from none
            self._store(self.audit.judgment_rows(batch, [output for output, _ in taken],
                                                 sum(seconds for _, seconds in taken)))
        self.open = still

    @staticmethod
    def _kept(crashed, index: int, reason: str) -> tuple[JudgeOutput, float]:
        """A request of a crashed decoder: its answer where it had ended (and can still be read), else a failure."""
        if crashed.has_ended(index):
            try:
                return crashed.take(index)
            except Exception:  # the decoder's own state broke with it: the request fails with the batch
                pass
        return JudgeOutput(raw_text="", input_tokens=None, output_tokens=None, error=reason), 0.0

    def finish(self) -> None:
        while self.busy:
            self.step()

    def _store(self, rows: list[dict]) -> None:
        self.audit.store_judgments(rows, self.stage)
        if self.on_stored is not None:
            self.on_stored(len(rows))

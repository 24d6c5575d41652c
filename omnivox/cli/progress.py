"""Progress bars for long commands: one tqdm bar per stage, fed by the ``callback(stage, step, total)`` that the
pipelines, the exporter and the previews report through."""

from __future__ import annotations

from typing import Callable


def progress_bar() -> Callable[[str, int, int], None]:
    """A ``callback(stage, step, total)`` drawing one bar per stage (on stderr), closed when it reaches ``total``."""
    from tqdm import tqdm

    import time

    bars = {}
    started = {}  # stage -> when its step 0 was reported

    def callback(stage: str, step: int, total: int) -> None:
        if stage not in bars:
            if step <= 0:
                started.setdefault(stage, time.time())
                return  # a bar appears with the first finished step, so an early error stays one clean line
            bars[stage] = tqdm(total=total, desc=stage, leave=False, unit="step")
            # Rates and ETAs count from the stage's start, not from the bar's first appearance (which made the
            # first step look instantaneous: "144631.17step/s").
            bars[stage].start_t = started.pop(stage, bars[stage].start_t)
        bar = bars[stage]
        bar.n = step  # steps may start at 0 and need not come one by one
        bar.refresh()
        if step >= total:
            bars.pop(stage).close()

    return callback

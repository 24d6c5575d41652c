"""The CLI's progress bars (issue 25, part 4): rates count from the stage's start."""

import time


def test_first_step_rate_counts_from_the_stage_start(monkeypatch):
    import tqdm

    from omnivox.cli.progress import progress_bar

    shown = []
    real = tqdm.tqdm

    class Recording(real):
        def refresh(self, *args, **kwargs):
            shown.append((self.n, self.format_dict["elapsed"]))
            return super().refresh(*args, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    callback = progress_bar()
    callback("decode", 0, 4)
    time.sleep(0.2)
    callback("decode", 1, 4)
    # The bar's clock started with step 0 (at least the 0.2 s slept before step 1), not when the bar first
    # appeared (about 0 s, which printed rates like "144631.17step/s").
    (n, elapsed), = [entry for entry in shown if entry[0] == 1]
    assert elapsed >= 0.19
    callback("decode", 4, 4)

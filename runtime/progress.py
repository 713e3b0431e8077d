"""Progress bars for long work (exports, calibration, benchmarks), on stderr: shared by every layer
above the runtime, so it lives here; tqdm (the [export] extra) is imported only when a bar is shown."""

from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, enabled: bool = True, total: int | None = None) -> Iterable[T]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit="step", leave=False)

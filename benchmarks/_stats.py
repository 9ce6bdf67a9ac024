"""Seed statistics of the benchmarks: mean ± standard deviation, Welch's t-test, paired t-test.

A claim "reproduces" only when the difference it names exceeds the seed spread: the two-sided
test below rejects "no difference" at 5% and the difference has the claimed sign.

* Two variants (each trained with its own seeds): Welch's t-test (unequal variances),
  t = (m_a − m_b) / √(s_a²/n_a + s_b²/n_b), Welch–Satterthwaite degrees of freedom.
* One model measured two ways (the same trained seeds, e.g. α = 0 vs α = 1): the paired t-test
  on the per-seed differences (n − 1 degrees of freedom).

Claims of "no difference" (or "matches") are judged against a margin: "reproduces" when the
95% confidence interval of the difference lies inside ±margin (or above −margin for "matches
or beats"), "does not reproduce" when the difference is significant (beyond the margin's side),
else "within the spread".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scipy import stats as _st

ALPHA = 0.05
"""Significance level of every test on the pages."""


@dataclass(frozen=True)
class Summary:
    """mean, sample standard deviation (ddof 1; 0 for one value) and count of a metric over seeds."""

    mean: float
    std: float
    n: int

    def text(self, fmt: str = ".4g", scale: float = 1.0, unit: str = "") -> str:
        """ "96.3 ± 0.5%"-style text (``scale`` 100 and ``unit`` "%" for rates)."""
        if self.n == 0:
            return "–"
        m, s = self.mean * scale, self.std * scale
        return f"{m:{fmt}}{unit}" if self.n == 1 else f"{m:{fmt}} ± {s:{fmt}}{unit}"


def summary(values: Sequence[float]) -> Summary:
    """:class:`Summary` of the finite values (NaN / None dropped)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return Summary(float("nan"), float("nan"), 0)
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return Summary(m, s, len(v))


@dataclass(frozen=True)
class Test:
    """A difference d = a − b with its 95% confidence interval and two-sided p-value."""

    diff: float
    low: float
    high: float
    p: float
    df: float
    kind: str  # "welch" or "paired"

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def _t_test(diff: float, se: float, df: float, kind: str) -> Test:
    if not math.isfinite(df) or df <= 0:
        return Test(diff, float("nan"), float("nan"), float("nan"), df, kind)
    if se == 0.0:  # no spread at all: any difference is beyond it
        p = 1.0 if diff == 0.0 else 0.0
        return Test(diff, diff, diff, p, df, kind)
    t = diff / se
    half = float(_st.t.ppf(1 - ALPHA / 2, df)) * se
    return Test(diff, diff - half, diff + half, float(2 * _st.t.sf(abs(t), df)), df, kind)


def welch(a: Sequence[float], b: Sequence[float]) -> Test:
    """Welch's t-test of mean(a) − mean(b) (independent seeds; needs >= 2 values on each side)."""
    sa, sb = summary(a), summary(b)
    diff = sa.mean - sb.mean
    if sa.n < 2 or sb.n < 2:
        return Test(diff, float("nan"), float("nan"), float("nan"), float("nan"), "welch")
    va, vb = sa.std**2 / sa.n, sb.std**2 / sb.n
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1)) if va + vb > 0 else sa.n + sb.n - 2
    return _t_test(diff, se, df, "welch")


def paired(a: Sequence[float], b: Sequence[float]) -> Test:
    """Paired t-test of a − b over the same seeds (``a[i]`` and ``b[i]`` from one trained model)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    s = summary(d)
    if s.n < 2:
        return Test(s.mean, float("nan"), float("nan"), float("nan"), float("nan"), "paired")
    return _t_test(s.mean, s.std / math.sqrt(s.n), s.n - 1, "paired")


def directional(test: Test, claimed_sign: int = 1) -> str:
    """Verdict of a claim "a > b" (``claimed_sign`` 1) or "a < b" (−1)."""
    if not math.isfinite(test.p):
        return "n/a (needs >= 2 seeds)"
    lean = "leans the claimed way" if test.diff * claimed_sign > 0 else "leans against the claim"
    if not test.significant:
        return f"within the spread ({lean})"
    return "reproduces" if test.diff * claimed_sign > 0 else "does not reproduce (significant, the other way)"


def equivalent(test: Test, margin: float, one_sided: bool = False) -> str:
    """Verdict of a claim "a ≈ b" (the 95% interval of a − b inside ±margin), or with ``one_sided``
    of "a matches or beats b" (the interval above −margin)."""
    if not math.isfinite(test.p):
        return "n/a (needs >= 2 seeds)"
    inside = test.low > -margin and (one_sided or test.high < margin)
    against = test.significant and (test.diff < 0 or not one_sided)
    if inside:
        return "reproduces" + (" (significant, but smaller than the margin)" if against else "")
    if against:
        return "does not reproduce (significant difference)"
    return "within the spread (interval wider than the margin)"

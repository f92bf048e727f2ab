"""Whether a canary version does worse on live traffic than the control arm.

With ``STREAMREC_DRIFT_ROLLOUT=canary`` a fine-tune that passed the gate is not promoted at
once: serving shows it to the experiment's ``canary`` arm (a share of the sessions) while
the control arm keeps the current lineage. ``CanaryWatch`` counts each arm's closed
exposure outcomes (``streamrec.exposure_outcomes.ArmTally``, the counts the experiment
report uses: clicked or not, the next click on the list or not) from the canary's start,
and ``judge_canary`` decides once, as soon as both arms have ``min_impressions`` resolved
impressions:

- ``roll_back`` when the canary's CTR *or* its served hit rate is below the control's with
  a one-sided two-proportion z-test at ``alpha`` (two tests, so rolling back is the side
  that errs: a false alarm costs one fine-tune, a missed regression costs shoppers);
- ``promote`` otherwise (not worse: the gate already found it better offline).

One look, not a running test: deciding on the first sample that reaches the minimum keeps
``alpha`` what it says (peeking at every new outcome would inflate it). When the deadline
passes first (too little traffic for a verdict), ``on_deadline`` decides: ``control``
(the canary is dropped, nothing changes) or ``promote``.

Only the canary arm's impressions served by the canary version count for it (a stale
label from an earlier canary never does); the control arm counts whatever it served.
Each request id counts once: an impression delivered again after its outcome closed (at
least once delivery, a re-read) would otherwise open and count a second outcome. That
costs one id per counted impression for the canary's life, which ends after about
``min_impressions`` / (canary share) impressions, or at the deadline when traffic is low.

Pure: outcomes and times in, a verdict out.

>>> from streamrec.exposure_outcomes import ExposureOutcome
>>> watch = CanaryWatch(7, started_ms=0, control="online", min_impressions=2, alpha=0.05,
...                     deadline_ms=60_000, on_deadline="control")
>>> def shown(request_id, arm, version, clicked):
...     hit = ("a",) if clicked else ()
...     return ExposureOutcome(request_id, "s", 10, ("a", "b"), version, arm, clicked=hit,
...                            next_click="a" if clicked else None)
>>> watch.observe(shown("r1", "canary", 7, True))
>>> watch.observe(shown("r2", "online", 6, True))
>>> watch.observe(shown("r3", "online", 6, False))
>>> watch.observe(shown("r1", "canary", 7, True))  # the same impression again
>>> watch.verdict(now_ms=1_000) is None  # the canary has one impression, it needs two
True
>>> watch.observe(shown("r4", "canary", 7, True))
>>> watch.verdict(now_ms=1_000).action
'promote'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from streamrec.exposure_outcomes import ArmTally, ExposureOutcome
from streamrec.proportions import ProportionTest, two_proportion_z_test

CANARY_ARM = "canary"
Action = Literal["promote", "roll_back", "keep_control"]


@dataclass(frozen=True, slots=True)
class CanaryVerdict:
    action: Action
    reason: str
    canary: ArmTally
    control: ArmTally
    ctr_test: ProportionTest
    hit_test: ProportionTest


def judge_canary(
    canary: ArmTally,
    control: ArmTally,
    *,
    min_impressions: int,
    alpha: float,
    expired: bool,
    on_deadline: Literal["control", "promote"],
) -> CanaryVerdict | None:
    """The verdict on the counts so far (see the module docstring); None: keep watching."""
    ctr_test = two_proportion_z_test(*canary.counts("ctr"), *control.counts("ctr"))
    hit_test = two_proportion_z_test(*canary.counts("served_hr"), *control.counts("served_hr"))

    def verdict(action: Action, reason: str) -> CanaryVerdict:
        return CanaryVerdict(action, reason, canary, control, ctr_test, hit_test)

    resolved = min(canary.impressions, control.impressions)
    if resolved < min_impressions:
        if not expired:
            return None
        action: Action = "promote" if on_deadline == "promote" else "keep_control"
        return verdict(
            action,
            f"deadline with {canary.impressions} canary and {control.impressions} control "
            f"impressions (< {min_impressions} each): {on_deadline} by configuration",
        )
    worse = [
        f"{name} {test.rate_a:.4f} < {test.rate_b:.4f} (p={test.p_less:.4f})"
        for name, test in (("CTR", ctr_test), ("served HR", hit_test))
        if test.p_less < alpha
    ]
    if worse:
        return verdict(
            "roll_back", f"canary worse than control at alpha {alpha}: " + "; ".join(worse)
        )
    return verdict(
        "promote",
        f"canary not worse than control on {resolved}+ impressions each: CTR "
        f"{ctr_test.rate_a:.4f} vs {ctr_test.rate_b:.4f} (p={ctr_test.p_less:.4f}), served HR "
        f"{hit_test.rate_a:.4f} vs {hit_test.rate_b:.4f} (p={hit_test.p_less:.4f})",
    )


class CanaryWatch:
    """The outcomes of one canary ``version`` against the ``control`` arm's, from
    ``started_ms`` (event time) on; ``verdict`` once it is due."""

    def __init__(
        self,
        version: int,
        *,
        started_ms: int,
        control: str,
        min_impressions: int,
        alpha: float,
        deadline_ms: int,
        on_deadline: Literal["control", "promote"],
    ) -> None:
        self.version = version
        self.started_ms = started_ms
        self.control = control
        self.min_impressions = min_impressions
        self.alpha = alpha
        self.deadline_ms = deadline_ms
        self.on_deadline: Literal["control", "promote"] = on_deadline
        self.canary = ArmTally()
        self.control_tally = ArmTally()
        self._counted: set[str] = set()

    def observe(self, outcome: ExposureOutcome) -> None:
        """Count one closed outcome if it belongs to the canary or the control arm."""
        if outcome.ts < self.started_ms or outcome.request_id in self._counted:
            return
        if outcome.arm == CANARY_ARM and outcome.model_version == self.version:
            self.canary.add(outcome)
        elif outcome.arm == self.control:
            self.control_tally.add(outcome)
        else:
            return
        self._counted.add(outcome.request_id)

    def verdict(self, now_ms: int) -> CanaryVerdict | None:
        """The verdict, or None while there is too little traffic and time is left."""
        return judge_canary(
            self.canary,
            self.control_tally,
            min_impressions=self.min_impressions,
            alpha=self.alpha,
            expired=now_ms >= self.started_ms + self.deadline_ms,
            on_deadline=self.on_deadline,
        )

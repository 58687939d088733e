"""The demo's final table: chance, after CoT-SFT, after GRPO — overall and per category, with 95% CIs — and
GRPO's gain over SFT on the same questions, with its paired 95% CI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from longrl.atomic import write_text_atomic
from longrl.demo.plan import DemoPlan
from longrl.eval.scoring import paired_difference_interval


def _cell(entry: dict[str, Any] | None) -> str:
    """ "61.2 [58.1, 64.3]" (percent, Wilson 95% interval) or "-"."""
    if not entry or entry.get("accuracy") is None:
        return "-"
    low, high = entry["ci95"]
    return f"{100 * entry['accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def _rows(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {"overall": {"accuracy": metrics["accuracy"], "ci95": metrics["ci95"], "n": metrics["n"]}}
    for name, entry in sorted(metrics.get("per_category", {}).items()):
        rows[name] = entry
    return rows


def paired_gain(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """After minus before on the questions both evals scored (`longrl eval` prediction records by id):
    {"n", "mean", "ci95"} as fractions (see `paired_difference_interval`); None when fewer than 2 are shared."""
    ids = sorted(set(before) & set(after))
    if len(ids) < 2:
        return None
    mean, lo, hi = paired_difference_interval(
        [before[i]["accuracy"] for i in ids], [after[i]["accuracy"] for i in ids]
    )
    return {"n": len(ids), "mean": mean, "ci95": [lo, hi]}


def _gain_text(gain: dict[str, Any]) -> str:
    lo, hi = gain["ci95"]
    if lo == hi:  # every question moved by the same amount (in practice: no answer changed)
        return f"{100 * gain['mean']:+.1f} points, the same on every question (n={gain['n']}): no interval"
    return (
        f"{100 * gain['mean']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] (paired 95% CI, n={gain['n']})"
    )


def intervals_separate(lower: dict[str, Any], upper: dict[str, Any]) -> bool:
    """True when upper's 95% interval lies wholly above lower's (the demo's bar for "clearly above")."""
    return upper["ci95"][0] > lower["ci95"][1]


@dataclass
class DemoReport:
    """What `longrl demo` measured. after_sft / after_rl: `longrl eval` metrics on the held-out questions."""

    plan: DemoPlan
    seed: int
    chance: float
    after_sft: dict[str, Any]
    after_rl: dict[str, Any]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    reward_curve: Path | None = None
    model_dir: Path | None = None
    rl_rows: int = 0
    # after GRPO minus after SFT on the same questions (`paired_gain`); None when not measured
    gain: dict[str, Any] | None = None

    def table_rows(self) -> list[tuple[str, str, str, str]]:
        sft, rl = _rows(self.after_sft), _rows(self.after_rl)
        out = []
        for name in sft:
            n = sft[name].get("n", "")
            out.append(
                (f"{name} (n={n})", f"{100 * self.chance:.1f}", _cell(sft.get(name)), _cell(rl.get(name)))
            )
        return out

    def verdict(self) -> dict[str, bool]:
        """The demo's claims on the overall accuracy: SFT above chance, RL above SFT (non-overlapping CIs),
        and, where measured, the paired gain's interval above zero."""
        sft, rl = self.after_sft, self.after_rl
        out = {
            "sft_above_chance": sft["ci95"][0] > self.chance,
            "rl_above_sft": intervals_separate(sft, rl),
        }
        if self.gain is not None:
            out["rl_gain_above_zero"] = self.gain["ci95"][0] > 0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.name,
            "seed": self.seed,
            "settings": self.plan.__dict__,
            "chance": self.chance,
            "after_sft": {
                k: v
                for k, v in self.after_sft.items()
                if k in ("n", "accuracy", "ci95", "format_rate", "per_category")
            },
            "after_rl": {
                k: v
                for k, v in self.after_rl.items()
                if k in ("n", "accuracy", "ci95", "format_rate", "per_category")
            },
            "rl_minus_sft": self.gain,
            "verdict": self.verdict(),
            "rl_rows": self.rl_rows,
            "stage_seconds": {k: round(v, 1) for k, v in self.stage_seconds.items()},
            "total_seconds": round(self.total_seconds, 1),
            "target_seconds": 60 * self.plan.target_minutes,
            "reward_curve": str(self.reward_curve) if self.reward_curve else None,
            "model": str(self.model_dir) if self.model_dir else None,
        }

    def markdown(self) -> str:
        lines = [
            f"# longrl demo ({self.plan.name}, seed {self.seed})",
            "",
            f"Held-out questions: {self.after_sft['n']}; accuracy % [95% CI].",
            "",
            "| | chance | after CoT-SFT | after GRPO |",
            "|---|---|---|---|",
        ]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.table_rows()]
        if self.gain is not None:
            lines += ["", f"After GRPO minus after SFT, same questions: {_gain_text(self.gain)}."]
        lines += [
            "",
            f"Total time: {self.total_seconds:.0f} s (target {60 * self.plan.target_minutes:.0f} s).",
        ]
        lines += [f"- {name}: {sec:.1f} s" for name, sec in self.stage_seconds.items()]
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> None:
        write_text_atomic(out / "demo.md", self.markdown())

    def footer(self) -> str:
        v = self.verdict()
        target = 60 * self.plan.target_minutes
        return "\n".join(
            [
                f"SFT above chance: {'yes' if v['sft_above_chance'] else 'no'}; "
                f"RL above SFT (non-overlapping 95% CIs): {'yes' if v['rl_above_sft'] else 'no'}",
                *([f"RL minus SFT: {_gain_text(self.gain)}"] if self.gain is not None else []),
                f"time: {self.total_seconds:.0f} s (target {target:.0f} s on 2 CPU cores)",
                f"model: {self.model_dir}"
                + (f"   reward curve: {self.reward_curve}" if self.reward_curve else ""),
            ]
        )


def accuracy_table(report: DemoReport) -> Table:
    table = Table(title=f"longrl demo: held-out accuracy % [95% CI] ({report.plan.name}, seed {report.seed})")
    for column in ("", "chance", "after CoT-SFT", "after GRPO"):
        table.add_column(column, justify="left" if not column else "right")
    for row in report.table_rows():
        table.add_row(*row)
    return table

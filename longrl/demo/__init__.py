"""`longrl demo`: data -> CoT-SFT -> GRPO with MR-SP -> eval on the built-in tiny model (see run.py)."""

from longrl.demo.plan import FULL, QUICK, DemoPlan, plan_for

__all__ = ["FULL", "QUICK", "DemoPlan", "plan_for"]

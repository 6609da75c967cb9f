"""Privacy: does the noise match its theory, does the ledger stop at exhaustion, and does a differencing attack
stay within the stated epsilon?

Parts (the project's own functions, privacy.checks, the same code path as the tests):
- noise: 100,000 OpenDP draws per mechanism (Laplace and Gaussian, on integers and floats, epsilon 0.5 and 2,
  sensitivity 3): empirical variance against the mechanism's exact variance (goal: within 3%).
- ledger: a budget of epsilon 1.0 spent in queries of 0.1 (exact rationals): the query that is refused.
- attack: one person who adds the maximum to one cell, released 3,000 times with and without them under Laplace
  at epsilon 1 (the cell's sum gets its share of it): the best threshold test's empirical epsilon with its
  Clopper-Pearson lower bound, against the stated one; and the same two queries without noise (k-anonymity only),
  whose difference is the person's value, exactly. The peer is that k-only release: what a reporting tool without
  differential privacy publishes.

    .venv/bin/python -m scripts.bench.privacy            # writes its section of docs/benchmarks.md
    .venv/bin/python -m scripts.bench.privacy --no-doc
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.bench.common import command, load_text, logger, machine, machine_text, now
from scripts.bench.doc import emit

log = logger("privacy")
NAME = "bench_privacy"


def ledger_exhaustion(total: float = 1.0, step: float = 0.1) -> dict[str, Any]:
    from privacy.errors import BudgetExceeded
    from privacy.ledger import Ledger

    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.db")
        ledger.ensure_budget("d", total, 0.0)
        accepted = 0
        while True:
            try:
                ledger.spend("d", step, 0.0, query=f"q{accepted}", who="bench")
            except BudgetExceeded:
                break
            accepted += 1
        b = ledger.budget("d")
        return {"total": total, "step": step, "accepted": accepted, "spent": float(b.epsilon_spent),
                "history": len(ledger.history("d"))}


def section(m: dict[str, Any], noise: list[dict[str, Any]], ledger: dict[str, Any], attack: dict[str, Any],
            argv: Sequence[str] | None) -> str:
    worst = max(r["relative_error"] for r in noise)
    lines = [
        "## Privacy: DP noise, the budget ledger, a differencing attack", "",
        f"`{command('scripts.bench.privacy', argv)}`, {now()}; {machine_text(m)}; {load_text(m)}.", "",
        "### Noise against theory (100,000 OpenDP draws each; goal: within 3%)", "",
        "| mechanism | values | epsilon | delta | scale | variance (theory) | variance (measured) | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in noise:
        lines.append(f"| {r['kind']} | {'integers' if r['integer'] else 'floats'} | {r['epsilon']:g} | "
                     f"{r['delta']:g} | {r['scale']:.4g} | {r['variance_theory']:.4g} | "
                     f"{r['variance_empirical']:.4g} | {r['relative_error']:.2%} |")
    lines += ["", f"Largest error {worst:.2%}: goal {'met' if worst <= 0.03 else 'NOT met'}.", "",
              "### Ledger", "",
              f"A budget of epsilon {ledger['total']:g} spent in queries of {ledger['step']:g}: "
              f"{ledger['accepted']} accepted (spent {ledger['spent']:g}), the next refused with the ledger unchanged "
              f"({ledger['history']} entries): exactly at exhaustion "
              f"({'met' if ledger['accepted'] == round(ledger['total'] / ledger['step']) else 'NOT met'}).", "",
              "### Differencing attack on one cell", "",
              "| release | what the attacker gets |", "|---|---|",
              f"| k-anonymity only (the peer: exact figures, cells under k suppressed) | the person's value, "
              f"{attack['k_only_recovered']:g} of {attack['person_value']:g}, exactly |",
              f"| Laplace, epsilon {attack['epsilon']:g} ({attack['epsilon_cell']:g} on this cell's sum), "
              f"{attack['trials']:,} releases each | empirical epsilon {attack['empirical_epsilon']:.3f}, lower bound "
              f"{attack['lower_bound']:.3f} (Clopper-Pearson, alpha 0.001); mean error of the difference "
              f"{attack['dp_recovery_mean_abs_error']:.1f} |",
              "", f"The lower bound {attack['lower_bound']:.3f} is "
              f"{'within' if attack['lower_bound'] <= attack['epsilon_cell'] else 'ABOVE'} the stated "
              f"{attack['epsilon_cell']:g}: the attack cannot tell the two data sets apart beyond the stated epsilon."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from privacy.checks import differencing_attack, noise_variance_check

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-doc", action="store_true", help="print the section only")
    p.add_argument("--trials", type=int, default=3000, help="releases of each data set in the attack")
    args = p.parse_args(argv)
    m = machine("opendp", "numpy")
    log("noise variance")
    noise = noise_variance_check(100_000)
    log("ledger")
    ledger = ledger_exhaustion()
    log("differencing attack")
    attack = differencing_attack(1.0, args.trials, seed=1)
    emit(NAME, section(m, noise, ledger, attack, argv), write=not args.no_doc)


if __name__ == "__main__":
    main()

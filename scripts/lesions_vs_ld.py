"""Lesion by lesion against LD, from an evaluation's safety.json: what `denoise-node evaluate` now prints under its
scorecard (discordant lesions and McNemar's exact p), for evaluations recorded before it did.

    .venv/bin/python scripts/lesions_vs_ld.py work/eval-cyclegan-1.1.0/safety.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from denoise_trainer.evaluate.lesions import lesion_scores_from_json
from denoise_trainer.evaluate.scorecard import MIN_LESION_RADIUS_MM, lesions_against_ld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("safety", type=Path, help="safety.json of a `denoise-node evaluate` run")
    args = parser.parse_args()
    scores = lesion_scores_from_json(json.loads(args.safety.read_text(encoding="utf-8")))
    for method in sorted({s.method for s in scores}):
        result = lesions_against_ld(scores, method)
        lost = sum(s.lost for s in scores if s.method == method)
        n = sum(s.method == method for s in scores)
        print(f"{method}: lost {lost}/{n}" + (f"; against LD: {result}" if result else ""))
    print(f"(median contrast kept is scored on lesions of radius ≥ {MIN_LESION_RADIUS_MM} mm; 'lost' on all)")


if __name__ == "__main__":
    main()
